"""A fine-tune's input weights (issue 16): a .pt state_dict uploaded like a dataset becomes
a weights file of its organization; a job names it by id (API, form, command line), checked
at submission (it exists, it is the consumer's own, it is a weights file); the file is only
ever read as tensors (torch.load weights_only), and a file that does not fit the task's
model fails with a message in the consumer's terms."""

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from marketplace.models import Dataset, Job
from marketplace.services import weights as weights_service
from workers.training import weights as runtime_weights

from .api_support import assert_error, job_body
from .test_api_uploads import send

pytestmark = pytest.mark.django_db
MARKER = "computemesh-weights-payload-ran"


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def small_net(hidden: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class RunsCode:
    """What a hostile weights file holds: unpickling it runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_zip(marker: Path) -> bytes:
    """torch.save's zip layout (archive/data.pkl) whose pickle calls os.system."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": RunsCode(marker)}, protocol=2))
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")
    return buf.getvalue()


def upload_weights(api, user, content: bytes, name: str = "pretrained.pt"):
    api.as_user(user)
    _, finished = send(api, content, name=name, chunk=1 << 16)
    return finished


# --- upload ---------------------------------------------------------------------------------

def test_a_pt_upload_is_a_weights_file_of_the_organization(api, alice, healthcare):
    finished = upload_weights(api, alice, saved(small_net().state_dict()))
    assert finished.status_code == 201, finished.content
    body = finished.json()
    assert body["kind"] == "weights" and body["entries"] == 4  # two weights, two biases
    stored = Dataset.objects.get(pk=body["id"])
    assert stored.owner == healthcare and stored.kind == "weights"


def test_a_finished_jobs_model_file_is_accepted_as_weights(api, alice):
    """model.pt as the platform hands it back ({"model": state_dict, "metric": …})."""
    model_file = {"template": None, "task": "task:X", "params": {"epochs": 2},
                  "model": small_net().state_dict(), "metric": {"accuracy": 0.9}}
    assert upload_weights(api, alice, saved(model_file)).status_code == 201


@pytest.mark.parametrize("content,why", [
    (saved(small_net()), "a whole pickled module names torch.nn classes"),
    (pickle.dumps({"w": [1.0, 2.0]}), "a plain pickle, not torch's zip format"),
    (saved({"epochs": 3}), "no tensors"),
    (b"PK\x03\x04 not really a zip", "damaged"),
])
def test_files_that_are_not_a_state_dict_are_refused_at_upload(api, alice, content, why):
    data = assert_error(upload_weights(api, alice, content), 400, "file")
    assert data["code"] == "invalid_weights", (why, data)
    assert not Dataset.objects.filter(kind="weights").exists()


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(api, alice, tmp_path):
    marker = tmp_path / MARKER
    hostile = hostile_zip(marker)
    data = assert_error(upload_weights(api, alice, hostile), 400, "file")
    assert "posix.system" in data["detail"] or "os.system" in data["detail"], data
    # The runtime's own reader (the providers', the verifier's) refuses it too: weights_only.
    path = tmp_path / "hostile.pt"
    path.write_bytes(hostile)
    with pytest.raises(runtime_weights.WeightsError, match="weights_only"):
        runtime_weights.read_state(path)
    assert not marker.exists()


# --- submission -----------------------------------------------------------------------------

@pytest.fixture
def alices_weights(api, alice) -> int:
    finished = upload_weights(api, alice, saved(small_net().state_dict()))
    assert finished.status_code == 201, finished.content
    return finished.json()["id"]


def test_a_job_names_its_weights_and_keeps_them(api, alice, alices_weights):
    api.as_user(alice)
    response = api.post("/api/v1/jobs/", job_body(weights=alices_weights), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["weights"] == alices_weights
    assert Job.objects.get(pk=response.json()["id"]).weights_id == alices_weights


def test_another_organizations_weights_are_refused(api, bob, alices_weights):
    api.as_user(bob)
    data = assert_error(api.post("/api/v1/jobs/", job_body(weights=alices_weights), format="json"),
                        400, "weights")
    assert "No weights file of yours" in data["detail"]
    assert not Job.objects.exists()


def test_a_missing_weights_file_is_refused(api, alice, alices_weights):
    api.as_user(alice)
    assert_error(api.post("/api/v1/jobs/", job_body(weights=alices_weights + 1000), format="json"),
                 400, "weights")
    assert_error(api.post("/api/v1/jobs/", job_body(weights="x"), format="json"), 400, "weights")


def test_a_dataset_is_not_a_weights_file_nor_the_other_way_round(api, alice, alices_weights):
    api.as_user(alice)
    csv = "a,b,label\n" + "\n".join(f"{i},{i % 3},{i % 2}" for i in range(20)) + "\n"
    _, finished = send(api, csv.encode(), name="vitals.csv", chunk=1 << 16)
    assert finished.status_code == 201, finished.content
    table = finished.json()["id"]
    data = assert_error(api.post("/api/v1/jobs/", job_body(weights=table), format="json"), 400, "weights")
    assert data["code"] == "not_weights"
    assert_error(api.post("/api/v1/jobs/", job_body(dataset=str(alices_weights)), format="json"),
                 400, "dataset")


def test_a_weights_file_in_use_is_not_deleted(api, alice, alices_weights):
    api.as_user(alice)
    assert api.post("/api/v1/jobs/", job_body(weights=alices_weights), format="json").status_code == 201
    data = assert_error(api.delete(f"/api/v1/datasets/{alices_weights}/"), 409)
    assert data["code"] == "dataset_in_use"


def test_the_job_form_offers_only_the_organizations_weights(healthcare, energy, alices_weights):
    from marketplace.forms.jobs import JobForm

    own = dict(JobForm(organization=healthcare).fields["weights"].choices)
    assert str(alices_weights) in own
    assert str(alices_weights) not in dict(JobForm(organization=energy).fields["weights"].choices)
    form = JobForm(organization=healthcare)
    offered = [value for value, _ in _flat(form.fields["dataset"].widget.choices)]
    assert offered and str(alices_weights) not in offered  # a weights file is not offered as data


def _flat(choices):
    for value, label in choices:
        if isinstance(label, list | tuple):  # an optgroup
            yield from label
        else:
            yield value, label


# --- the runtime's strict check ---------------------------------------------------------------

def test_weights_load_into_the_model_exactly(tmp_path):
    path = tmp_path / "w.pt"
    source = small_net()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    torch.save(source.state_dict(), path)
    target = small_net()
    runtime_weights.load_into(target, path)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(),
                                                 source.state_dict().values(), strict=True))


def test_a_file_that_does_not_fit_the_model_says_which_tensors_in_the_consumers_terms(tmp_path):
    path = tmp_path / "secret-provider-folder" / "w.pt"
    path.parent.mkdir()
    torch.save(small_net(hidden=8).state_dict(), path)
    with pytest.raises(runtime_weights.WeightsError) as shapes:
        runtime_weights.load_into(small_net(hidden=16), path)
    assert "0.weight is (8, 4), the model's (16, 4)" in str(shapes.value)
    torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(runtime_weights.WeightsError) as names:
        runtime_weights.load_into(small_net(), path)
    assert "missing 0.bias" in str(names.value) and "unexpected encoder.weight" in str(names.value)
    path.write_bytes(b"not a torch file")
    with pytest.raises(runtime_weights.WeightsError) as broken:
        runtime_weights.load_into(small_net(), path)
    for error in (shapes.value, names.value, broken.value):
        assert "secret-provider-folder" not in str(error) and str(tmp_path) not in str(error)


def test_the_upload_check_agrees_with_weights_only_on_what_torch_saves(tmp_path):
    """Every state_dict torch.save writes by default passes the platform's stdlib check."""
    for state in (small_net().state_dict(), nn.BatchNorm1d(3).state_dict(),
                  {"model": nn.Embedding(5, 2).state_dict(), "step": 3}):
        path = tmp_path / "w.pt"
        torch.save(state, path)
        assert weights_service.weights_inspect(str(path)) >= 1
        runtime_weights.read_state(path)


def test_the_browser_form_submits_a_fine_tune_and_the_job_page_shows_its_weights(
        client, alice, bob, alices_weights):
    from django.urls import reverse

    from .test_pages_jobs import form_data

    client.force_login(alice)
    page = client.get(reverse("job_new"))
    assert f'<option value="{alices_weights}">pretrained.pt' in page.content.decode()
    response = client.post(reverse("job_new"), form_data(weights=str(alices_weights)))
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get()
    assert job.weights_id == alices_weights
    assert 'data-testid="job-weights"' in client.get(reverse("job_detail", args=[job.pk])).content.decode()
    # Another organization's file is a form error, not a job (nor a 500).
    client.force_login(bob)
    refused = client.post(reverse("job_new"), form_data(weights=str(alices_weights)))
    assert refused.status_code == 200 and Job.objects.count() == 1
