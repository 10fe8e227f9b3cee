"""MLflow side of the peer benchmark, run by the MLflow venv's python: log one checkpoint, or download one.

    python mlflow_step.py log TRACKING_URI RUN_ID|- ARTIFACT_PATH FILE     (prints the run id)
    python mlflow_step.py download TRACKING_URI RUN_ID ARTIFACT_PATH DEST_DIR
"""

import sys

import mlflow


def log(uri: str, run_id: str, artifact_path: str, path: str) -> None:
    """log_artifact into the run (a new one when run_id is "-"), as a training script does per checkpoint."""
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=None if run_id == "-" else run_id) as run:
        mlflow.log_artifact(path, artifact_path=artifact_path)
        print(run.info.run_id)


def download(uri: str, run_id: str, artifact_path: str, dest: str) -> None:
    mlflow.set_tracking_uri(uri)
    mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=dest)


if __name__ == "__main__":
    {"log": log, "download": download}[sys.argv[1]](*sys.argv[2:])
