"""Input weights for a fine-tune (issue 16): a torch state_dict that a job's model starts
from at step 0, uploaded like a dataset (a resumable upload named `.pt` or `.pth`) and
stored as a Dataset of kind "weights": content-addressed by its SHA-256, encrypted at rest,
counted in the quota and delivered to agents with the dataset's checks.

Only tensors and plain data are accepted, never arbitrary pickled objects: the providers and
the verifier load the file with `torch.load(..., weights_only=True)`
(workers/training/weights.py). This process has no torch, so the upload is checked here
with the standard library against the same rule: a file in torch's zip format whose pickle
names only the classes a state_dict needs. A pickle that would run code (os.system, eval…)
is refused before it is stored.
"""

import pickletools
import zipfile

from django.conf import settings

from ..errors import MarketError
from ..models import Dataset, Organization

SUFFIXES = (".pt", ".pth")
# What torch.save writes for a state_dict (or a {"model": state_dict, …} file such as a
# job's downloaded model.pt): the tensors' rebuild functions, their storages, OrderedDict.
ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
}
PICKLE_MAX_BYTES = 64 * 1_048_576  # the object graph; the tensors' bytes are separate entries


def _fail(message: str) -> MarketError:
    return MarketError(message, field="file", code="invalid_weights")


def is_weights_name(name: str) -> bool:
    return (name or "").lower().endswith(SUFFIXES)


def max_bytes() -> int:
    return settings.WEIGHTS_MAX_BYTES


def weights_inspect(path: str) -> int:
    """Check an uploaded weights file; return how many tensors it holds, or raise
    MarketError saying what is wrong."""
    try:
        with zipfile.ZipFile(path) as z:
            pickles = [i for i in z.infolist() if i.filename.endswith("/data.pkl")
                       or i.filename == "data.pkl"]
            if len(pickles) != 1:
                raise _fail("This is not a torch weights file: save the model's state_dict with "
                            "torch.save(model.state_dict(), 'weights.pt').")
            if pickles[0].file_size > PICKLE_MAX_BYTES:
                raise _fail("The weights file's object graph is too large for a state_dict.")
            data = z.read(pickles[0])
    except zipfile.BadZipFile:
        raise _fail("This is not a torch weights file (torch.save's zip format); save the "
                    "state_dict with torch.save (legacy and plain pickle files are refused).") from None
    return _pickle_check(data)


def _pickle_check(data: bytes) -> int:
    tensors = 0
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                storage = module == "torch" and name.endswith("Storage") and name.isidentifier()
                if (module, name) not in ALLOWED_GLOBALS and not storage:
                    raise _fail(f"The weights file names {module[:60]}.{name[:60]}, which is not "
                                "part of a state_dict: only tensors and plain data are loaded "
                                "(torch.load weights_only), never other objects.")
            elif op.name == "BINPERSID":  # one per tensor: its storage, a separate entry
                tensors += 1
            elif op.name in ("STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"):
                raise _fail("The weights file builds objects in a way a state_dict saved with "
                            "torch.save's defaults does not; it is refused.")
    except ValueError as exc:  # pickletools' word for a damaged pickle
        raise _fail(f"The weights file is damaged ({str(exc)[:120]}).") from None
    if tensors == 0:
        raise _fail("The weights file holds no tensors.")
    return tensors


def weights_resolve(ref: object, owner: Organization | None) -> Dataset | None:
    """A job's input weights: the id of a weights file of the owner's organization, or
    none. Another organization's file is not found, like a missing one."""
    ref = str(ref or "").strip()
    if ref in ("", "none"):
        return None
    found = (Dataset.objects.filter(pk=int(ref), owner=owner).first()
             if owner is not None and ref.isdigit() and len(ref) <= 18 else None)
    if found is None:
        raise MarketError("No weights file of yours has that id (upload one: a .pt state_dict).",
                          field="weights")
    if found.kind != "weights":
        raise MarketError(f"Upload #{found.pk} is a {found.get_kind_display()} dataset, not a "
                          "weights file: give the id of an uploaded .pt state_dict.",
                          field="weights", code="not_weights")
    return found
