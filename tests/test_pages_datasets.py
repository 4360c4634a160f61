from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from marketplace.models import Dataset


def csv_file(body: str, name="vitals.csv"):
    return SimpleUploadedFile(name, body.encode(), content_type="text/csv")


GOOD = "age,bp,label\n" + "\n".join(f"{40 + i},{120 + i},{i % 2}" for i in range(20)) + "\n"


def test_a_consumer_uploads_a_dataset_and_sees_it(client, alice, healthcare):
    client.force_login(alice)
    response = client.post(reverse("datasets"), {"file": csv_file(GOOD), "label_column": "label"})
    assert response.status_code == 302
    ds = Dataset.objects.get()
    assert ds.owner == healthcare and ds.rows == 20 and ds.columns == ["age", "bp", "label"]
    page = client.get(reverse("datasets")).content.decode()
    assert "vitals.csv" in page and "20" in page


def test_bad_files_show_the_reason_and_store_nothing(client, alice):
    client.force_login(alice)
    one_class = "age,label\n" + "\n".join(f"{i},1" for i in range(20))
    words = "age,label\n" + "\n".join(f"old,{i % 2}" for i in range(20))
    for body, label, reason in [("", "", "empty"), ("a;b\n1;2\n", "", "one column"),
                                (one_class, "label", "one class"), (words, "label", "not a number"),
                                (GOOD, "outcome", "no column")]:
        response = client.post(reverse("datasets"), {"file": csv_file(body or " "), "label_column": label})
        assert response.status_code == 200
        assert reason in response.content.decode()
    assert not Dataset.objects.exists()


def test_providers_get_403_and_other_organizations_see_nothing(client, carol, bob, alice, healthcare):
    client.force_login(alice)
    client.post(reverse("datasets"), {"file": csv_file(GOOD)})
    client.force_login(carol)
    assert client.get(reverse("datasets")).status_code == 403
    client.force_login(bob)
    assert "vitals.csv" not in client.get(reverse("datasets")).content.decode()
