"""Reads its environment the way Sedna's helmet-detection scripts and lib do, and writes what it
read as JSON to the path in argv[1]. Sedna's own code, reduced to what touches the environment:
``Context.get_parameters`` (a name, else its upper case), ``BaseConfig``'s variables and
``Context.get_algorithm_from_api`` for HEM_PARAMETERS."""

import json
import os
import sys


def get_parameters(param, default=None):
    value = os.environ.get(param) or os.environ.get(str(param).upper())
    return value if value else default


def get_algorithm_from_api(algorithm, **param):
    hard_example_name = get_parameters(f"{algorithm}_NAME")
    hem_parameters = get_parameters(f"{algorithm}_PARAMETERS")
    if not hard_example_name:
        return {}
    try:
        hem_parameters = json.loads(hem_parameters)
        hem_parameters = {p["key"]: p.get("value", "") for p in hem_parameters if "key" in p}
    except Exception:
        hem_parameters = {}
    hem_parameters.update(**param)
    return {"method": hard_example_name, "param": hem_parameters}


read = {
    # train.py / eval.py: _load_txt_dataset joins sample paths to this index's folder
    "original_dataset_url": get_parameters("original_dataset_url"),
    "train_dataset_url": os.getenv("TRAIN_DATASET_URL"),
    "test_dataset_url": get_parameters("test_dataset_url"),
    "model_url": os.getenv("MODEL_URL"),
    "namespace": os.getenv("NAMESPACE", ""),
    "job_name": os.getenv("JOB_NAME", "sedna"),
    "worker_name": os.getenv("WORKER_NAME", ""),
    "class_names": get_parameters("class_names"),
    "hem": get_algorithm_from_api("HEM"),
}
with open(sys.argv[1], "w") as out:
    json.dump(read, out)
