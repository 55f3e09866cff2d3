"""User-supplied strings never become S3 keys or AWS resource names: those derive from ids."""

from __future__ import annotations

import re
from pathlib import Path

from tests.api.support import write_jsonl
from tests.e2e.sagemaker_support import SMOL, SageMakerEnv, mocked_aws, sagemaker_settings

EVIL = "../../../etc/passwd; $(rm -rf ~) `x` <script>"
LABEL = "..; $(rm -rf ~) `x` <script> passwd"  # names may not contain '/' (400), the rest is a label
KEY = re.compile(r"^default/(datasets/ds|jobs/ft|adapters/adp)_[0-9a-z]{12}/[\w./-]+$")


HOSTILE_IDS = ["..", "..%2F..%2Fetc", "ds_x%00", "%2e%2e", "ds_" + "a" * 300, "ds_%27%20OR%201=1--"]


def test_hostile_path_ids_are_plain_not_found(tmp_path: Path) -> None:
    with mocked_aws(), SageMakerEnv(sagemaker_settings(tmp_path / "home")) as env:
        for path_id in HOSTILE_IDS:
            for template in ("/v0/datasets/{}", "/v0/finetune/{}", "/v0/adapters/{}/download"):
                resp = env.client.get(template.format(path_id))
                assert resp.status_code in (404, 405), (template, path_id, resp.status_code, resp.text)


def test_names_and_file_names_stay_labels(tmp_path: Path) -> None:
    rows = [{"input": f"say {i}", "target": f"SAY {i}"} for i in range(120)]
    source = write_jsonl(tmp_path / "data.jsonl", rows)
    with mocked_aws(), SageMakerEnv(sagemaker_settings(tmp_path / "home")) as env:
        with source.open("rb") as fh:
            resp = env.client.post(
                "/v0/datasets", data={"name": LABEL}, files={"file": (EVIL, fh, "application/x-ndjson")}
            )
        assert resp.status_code == 201, resp.text
        ds = resp.json()
        assert ds["name"] == LABEL  # kept as a label
        job = env.started(ds["id"], base_model=SMOL)
        for key in env.keys(""):
            assert KEY.match(key), key
        request = env.calls.of("CreateTrainingJob")[0]
        assert request["TrainingJobName"] == "fastuner-" + job["id"].replace("_", "-")
        assert re.fullmatch(r"fastuner-ft-[0-9a-z]{12}", request["TrainingJobName"])
        text = str(request)
        assert "passwd" not in text and "rm -rf" not in text and "script" not in text
