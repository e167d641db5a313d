"""The exported model's interface on the wire: signature names, TF Serving's REST bodies, and
the per-image result every prediction path (local Keras, local SavedModel, TF Serving over
REST) is reduced to.

A client sends one encoded image per instance to `serving_default` (row format)::

    POST http://HOST:8501/v1/models/<name>:predict
    {"signature_name": "serving_default",
     "instances": [{"image_bytes": {"b64": "<base64 of the PNG/JPEG file>"}}]}

TF Serving also accepts the input name left out for a one-input signature
(`"instances": [{"b64": "..."}]`) and the columnar form (`"inputs": {"image_bytes": [...]}`);
`body_to_inputs` reads all three exactly as the server does. The reply (row format) holds one
object per image: `labels`, `probabilities`, `decisions` (multi-label and binary), one
probability per finding name, and `class_index`/`class_name` (multi-class).

Only the standard library and numpy are used here, so building requests stays cheap.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SERVING_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "predict_images"
METADATA_SIGNATURE = "metadata"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
METADATA_INPUT = "unused"
# Outputs that are not one finding's probability.
RESERVED_OUTPUTS = ("labels", "probabilities", "decisions", "class_index", "class_name")
_SIGNATURE_INPUTS = {
    SERVING_SIGNATURE: BYTES_INPUT,
    IMAGES_SIGNATURE: IMAGES_INPUT,
    METADATA_SIGNATURE: METADATA_INPUT,
}


class ServingError(RuntimeError):
    """TF Serving answered with an error (bad input, unknown model...)."""


class ServerUnreachable(ServingError):
    """No reply from the server at all (refused, timed out, not HTTP)."""


# ------------------------------------------------------------------------------- requests


def request_body(images: Sequence[bytes], signature: str = SERVING_SIGNATURE) -> dict:
    """The REST predict body (row format) for encoded image files."""
    return {
        "signature_name": signature,
        "instances": [
            {BYTES_INPUT: {"b64": base64.b64encode(data).decode("ascii")}} for data in images
        ],
    }


def images_request_body(images: np.ndarray) -> dict:
    """The REST body for `predict_images`: (B, S, S, 1) images in 0..255 sent as float32."""
    array = np.asarray(images, dtype=np.float32)
    return {
        "signature_name": IMAGES_SIGNATURE,
        "instances": [{IMAGES_INPUT: image.tolist()} for image in array],
    }


def metadata_request_body() -> dict:
    """The REST body asking the `metadata` signature for the model's metadata (columnar form:
    its outputs are not batched)."""
    return {"signature_name": METADATA_SIGNATURE, "inputs": {METADATA_INPUT: 0}}


def _decode(value: Any) -> Any:
    """JSON value -> Python value, `{"b64": ...}` objects -> bytes (TF Serving's rule)."""
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ValueError(f"an object value must be {{'b64': ...}}, got keys {sorted(value)}")
        return base64.b64decode(value["b64"], validate=True)
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _as_array(name: str, values: list) -> np.ndarray:
    if name == BYTES_INPUT:
        if not all(isinstance(v, bytes) for v in values):
            raise ValueError(f"{BYTES_INPUT}: every instance must be {{'b64': ...}}")
        return np.array(values, dtype=object).reshape(len(values))
    if name == METADATA_INPUT:
        return np.asarray(values, dtype=np.int32)
    return np.asarray(values, dtype=np.float32)


def body_to_inputs(body: Mapping[str, Any]) -> tuple[str, dict[str, np.ndarray]]:
    """A REST predict body -> (signature name, {input name: batch array}), as TF Serving reads it.

    Raises:
        ValueError: the body is not a predict request for one of the exported signatures.
    """
    signature = body.get("signature_name", SERVING_SIGNATURE)
    if signature not in _SIGNATURE_INPUTS:
        raise ValueError(f"unknown signature {signature!r}; use one of {sorted(_SIGNATURE_INPUTS)}")
    name = _SIGNATURE_INPUTS[signature]
    if ("instances" in body) == ("inputs" in body):
        raise ValueError("a predict body holds exactly one of 'instances' (row) or 'inputs'")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise ValueError("'instances' must be a list")
        values = []
        for index, instance in enumerate(instances):
            # A one-input signature may leave the input name out.
            if isinstance(instance, dict) and set(instance) != {"b64"}:
                if set(instance) != {name}:
                    raise ValueError(
                        f"instance {index}: expected key {name!r}, got {sorted(instance)}"
                    )
                instance = instance[name]
            values.append(_decode(instance))
    else:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and set(inputs) != {"b64"}:
            if set(inputs) != {name}:
                raise ValueError(f"'inputs': expected key {name!r}, got {sorted(inputs)}")
            inputs = inputs[name]
        values = _decode(inputs)
        if not isinstance(values, list) and name != METADATA_INPUT:
            raise ValueError("'inputs' must hold a batch (a list)")
    return signature, {name: _as_array(name, values)}


# ------------------------------------------------------------------------------- replies


def parse_response(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """TF Serving's predict reply (row `predictions` or columnar `outputs`) -> one dict per image.

    Raises:
        ServingError: the reply is an error.
    """
    if "error" in body:
        raise ServingError(str(body["error"]))
    if "predictions" in body:
        rows = body["predictions"]
        if not all(isinstance(row, dict) for row in rows):
            raise ServingError(
                "expected one object per image in 'predictions' (a multi-output signature)"
            )
        return [dict(row) for row in rows]
    if "outputs" in body:
        outputs = body["outputs"]
        sizes = {len(v) for v in outputs.values()}
        if len(sizes) != 1:
            raise ServingError(f"outputs of different batch sizes: {sorted(sizes)}")
        return [{k: v[i] for k, v in outputs.items()} for i in range(sizes.pop())]
    raise ServingError(f"not a predict reply: keys {sorted(body)}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def image_result(row: Mapping[str, Any]) -> dict[str, Any]:
    """One image's signature outputs (numpy or JSON values) -> a plain, JSON-ready result.

    Returns:
        `{"findings": [{"name", "probability", "decision"}], "class": {"index", "name"} | None}`;
        `decision` is None for multi-class models (the class is the decision).
    """
    labels = [_text(v) for v in np.asarray(row["labels"], dtype=object).reshape(-1)]
    probs = np.asarray(row["probabilities"], dtype=np.float64).reshape(-1)
    decisions = row.get("decisions")
    decided = np.asarray(decisions).reshape(-1).astype(bool) if decisions is not None else None
    findings = [
        {
            "name": name,
            "probability": float(probs[i]),
            "decision": None if decided is None else bool(decided[i]),
        }
        for i, name in enumerate(labels)
    ]
    chosen = None
    if "class_index" in row:
        chosen = {
            "index": int(np.asarray(row["class_index"])),
            "name": _text(np.asarray(row["class_name"]).item()),
        }
    return {"findings": findings, "class": chosen}


def outputs_to_results(outputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A signature's batch outputs ({name: (B, ...) array}) -> one `image_result` per image."""
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    batch = len(arrays["probabilities"])
    return [image_result({k: v[i] for k, v in arrays.items()}) for i in range(batch)]


def error_reason(message: str) -> str:
    """The readable part of a TensorFlow error message (no graph trace, node or op names)."""
    keep = []
    for line in str(message).splitlines():
        text = line.strip()
        if (
            not text
            or text.startswith(("File ", "Detected at node", "Graph execution error", "[[{{node"))
            or text == "<stack traces unavailable>"
            or text.endswith("(most recent call last):")
        ):
            continue
        text = re.sub(r"\s*\[\[\{\{node [^}]*\}\}\]\]", "", text)
        text = re.sub(r"\s*\[Op:[^\]]*\]", "", text).strip()
        assertion = re.match(r"assertion failed: \[([^\]]*)\]", text)
        keep.append(assertion.group(1).strip() if assertion else text)
    return "; ".join(k for k in keep if k) or str(message).strip()


# ------------------------------------------------------------------------------- client


def predict_url(url: str) -> str:
    """`http://host:8501/v1/models/NAME[/versions/N]` (or the `:predict` URL) -> the predict URL."""
    url = url.rstrip("/")
    if url.endswith(":predict"):
        return url
    if not re.search(r"/v1/models/[^/:]+(/versions/\d+|/labels/[^/:]+)?$", url):
        raise ValueError(
            f"server URL {url!r}: expected http://HOST:PORT/v1/models/NAME "
            "(optionally /versions/N), e.g. http://localhost:8501/v1/models/cxr_multilabel"
        )
    return url + ":predict"


def post_json(url: str, body: Mapping[str, Any], timeout: float) -> dict:
    """POSTs a JSON body; returns the JSON reply (error replies too).

    Raises:
        ServerUnreachable: no reply.
        ServingError: a reply that is not JSON.
    """
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            text = reply.read()
    except urllib.error.HTTPError as err:  # TF Serving puts {"error": ...} in 4xx/5xx bodies
        text = err.read()
        if not text:
            raise ServingError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise ServerUnreachable(f"{url}: no reply ({getattr(err, 'reason', err)})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ServingError(f"{url}: reply is not JSON: {text[:200]!r}") from err


def query(url: str, images: Sequence[bytes], timeout: float = 30.0) -> list[dict[str, Any]]:
    """Sends encoded images to TF Serving's `serving_default`; returns one `image_result` each."""
    reply = post_json(predict_url(url), request_body(images), timeout)
    rows = parse_response(reply)
    if len(rows) != len(images):
        raise ServingError(f"sent {len(images)} images, got {len(rows)} predictions")
    return [image_result(row) for row in rows]
