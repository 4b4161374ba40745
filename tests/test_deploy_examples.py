"""The deployment examples in deploy/ and the Dockerfile agree with the code they deploy.

Offline checks (no cloud, no Kubernetes): the Ray cluster launcher YAML passes Ray's own schema; the
KubeRay and Kubernetes manifests have the fields their controllers need; every image is the published
one (the CUDA build where GPUs are asked for); every AUTODISTILL_* variable they set is one the code
reads, and the service's variables pass its settings model; the service points at the head's job server
with the cluster's token; the Ray pods and the service share the state volume at the same path.
"""
import copy
import json
import re
from pathlib import Path

import pytest
import ray
import yaml

from service.settings import ENV_PREFIX, ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
IMAGE = "registry.example.com/autodistill:0.1.0"
GPU_IMAGE = IMAGE + "-cu126"
STORAGE_VAR = "AUTODISTILL_STORAGE_PATH"   # what `autodistill search` reads as its default --storage-path
STATE_DIR = "/data"


def load_all(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text(encoding="utf-8")) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def launcher() -> dict:
    return yaml.safe_load((DEPLOY / "ray-cluster-aws.yaml").read_text(encoding="utf-8"))


def raycluster() -> dict:
    (rc,) = by_kind(load_all("kuberay-raycluster.yaml"), "RayCluster")
    return rc


def deployment() -> dict:
    (dep,) = by_kind(load_all("kubernetes-service.yaml"), "Deployment")
    return dep


def ray_pod_specs() -> dict[str, dict]:
    spec = raycluster()["spec"]
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in spec["workerGroupSpecs"]})
    return pods


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def variables_read_by_library() -> set[str]:
    names = set()
    for path in (ROOT / "autodistill").rglob("*.py"):
        names.update(re.findall(r"\bAUTODISTILL_[A-Z_]*[A-Z]\b", path.read_text(encoding="utf-8")))
    return names


def variables_set_in(text: str) -> set[str]:
    return set(re.findall(r"\b(AUTODISTILL_[A-Z_]*[A-Z])\s*[=:]", text)) | set(
        re.findall(r"name:\s*(AUTODISTILL_[A-Z_]*[A-Z])\b", text))


# ------------------------------------------------------------------ Ray cluster launcher (`ray up`)
def test_launcher_yaml_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config
    config = launcher()
    validate_config(prepare_config(copy.deepcopy(config)))
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 0   # a typo must not pass
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(broken))


def test_launcher_runs_the_published_image_with_a_gpu_worker_type():
    config = launcher()
    assert config["provider"]["type"] == "aws"
    assert config["docker"]["image"] == IMAGE
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}   # trials and drivers go to workers
    gpu = types["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] == 0
    assert gpu["docker"]["worker_image"] == GPU_IMAGE
    assert "--gpus all" in gpu["docker"]["worker_run_options"]
    assert types["cpu_worker"]["min_workers"] >= 1 and "docker" not in types["cpu_worker"]


def test_launcher_configures_storage_state_and_token_auth():
    config = launcher()
    options = config["docker"]["run_options"]
    storage = [o.split("=", 1)[1] for o in options if o.startswith(f"--env {STORAGE_VAR}=")]
    assert len(storage) == 1 and re.match(r"^(s3|gs)://[^/]+/", storage[0]), storage
    assert f"--volume /mnt/autodistill:{STATE_DIR}" in options
    assert "--env RAY_AUTH_MODE=token" in options
    env_file = next(o.split()[1] for o in options if o.startswith("--env-file "))
    init = " ".join(config["initialization_commands"])
    assert env_file in init and "RAY_AUTH_TOKEN=" in init and "AUTODISTILL_SERVICE_RAY_AUTH_TOKEN=" in init
    head = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "AUTODISTILL_SERVICE_RAY_ADDRESS=http://127.0.0.1:8265" in head and "autodistill serve" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])


# ------------------------------------------------------------------ KubeRay + the service Deployment
# field names of KubeRay's ray.io/v1 types (RayClusterSpec, HeadGroupSpec, WorkerGroupSpec, AutoscalerOptions)
KUBERAY_FIELDS = {
    "spec": {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
             "headServiceAnnotations", "suspend"},
    "head": {"serviceType", "headService", "enableIngress", "rayStartParams", "template"},
    "worker": {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
               "scaleStrategy"},
    "autoscaler": {"resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
                   "idleTimeoutSeconds", "upscalingMode", "version"},
}


def test_raycluster_has_the_fields_kuberay_needs():
    rc = raycluster()
    assert rc["apiVersion"] == "ray.io/v1"
    spec = rc["spec"]
    assert set(spec) <= KUBERAY_FIELDS["spec"]
    assert set(spec["headGroupSpec"]) <= KUBERAY_FIELDS["head"]
    assert all(set(g) <= KUBERAY_FIELDS["worker"] for g in spec["workerGroupSpecs"])
    assert set(spec["autoscalerOptions"]) <= KUBERAY_FIELDS["autoscaler"]
    assert spec["autoscalerOptions"]["upscalingMode"] in ("Default", "Aggressive", "Conservative")
    assert spec["rayVersion"] == ray.__version__   # the image's Ray (pyproject pin) = what KubeRay expects
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
        (container,) = group["template"]["spec"]["containers"]
        assert container["name"] and container["image"]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    # KubeRay's autoscaler sidecar reaches the GCS as well: it needs the cluster's token
    autoscaler_env = env_of(spec["autoscalerOptions"])
    assert autoscaler_env["RAY_AUTH_MODE"]["value"] == "token"
    assert autoscaler_env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "autodistill-ray"
    assert any(g["minReplicas"] >= 1 for g in spec["workerGroupSpecs"]), "a search driver needs a CPU worker"


def test_gpu_workers_ask_for_gpus_and_run_the_cuda_image():
    pods = ray_pod_specs()
    for name, pod in pods.items():
        (container,) = pod["containers"]
        resources = container["resources"]
        gpus = resources.get("limits", {}).get("nvidia.com/gpu")
        if name == "gpu":
            assert container["image"] == GPU_IMAGE
            assert int(gpus) >= 1 and resources["requests"]["nvidia.com/gpu"] == gpus   # extended: requests == limits
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        else:
            assert container["image"] == IMAGE and gpus is None, name
    (service,) = deployment()["spec"]["template"]["spec"]["containers"]
    assert service["image"] == IMAGE


def test_ray_pods_share_token_storage_and_state_with_the_service():
    docs = load_all("kuberay-raycluster.yaml") + load_all("kubernetes-service.yaml")
    (config_map,) = by_kind(docs, "ConfigMap")
    (claim,) = by_kind(docs, "PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    assert re.match(r"^(s3|gs)://[^/]+/", config_map["data"]["storage-uri"])
    pods = {**ray_pod_specs(), "service": deployment()["spec"]["template"]["spec"]}
    for name, pod in pods.items():
        (container,) = pod["containers"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert claims.get(mounts.get(STATE_DIR)) == claim["metadata"]["name"], f"{name}: {STATE_DIR} not shared"
        env = env_of(container)
        if name == "service":
            continue
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "autodistill-ray", "key": "token"}
        ref = env[STORAGE_VAR]["valueFrom"]["configMapKeyRef"]
        assert ref["name"] == config_map["metadata"]["name"] and ref["key"] in config_map["data"]
        assert pod["serviceAccountName"] == by_kind(docs, "ServiceAccount")[0]["metadata"]["name"]


def test_service_points_at_the_heads_job_server_with_valid_settings():
    rc, dep = raycluster(), deployment()
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    head_ports = {p["name"]: p["containerPort"] for p in rc["spec"]["headGroupSpec"]["template"]["spec"]
                  ["containers"][0]["ports"]}
    # KubeRay's head Service is <cluster>-head-svc; the service talks to the job server (dashboard port)
    assert env["AUTODISTILL_SERVICE_RAY_ADDRESS"]["value"] == \
        f"http://{rc['metadata']['name']}-head-svc:{head_ports['dashboard']}"
    assert env["AUTODISTILL_SERVICE_RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == \
        {"name": "autodistill-ray", "key": "token"}
    assert env["AUTODISTILL_SERVICE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "autodistill-db"
    # what the pod would see (secrets filled with stand-ins) passes the service's settings model
    environ = {k: v.get("value", "postgresql+psycopg://u:p@db:5432/autodistill" if "DATABASE" in k else "t")
               for k, v in env.items() if k.startswith(ENV_PREFIX)}
    settings = ServiceSettings.from_env(environ)
    assert settings.state_dir == Path(STATE_DIR) and settings.ray_address.startswith("http://")
    assert settings.sqlalchemy_url.startswith("postgresql+psycopg://")
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    (svc,) = by_kind(load_all("kubernetes-service.yaml"), "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_secrets_the_manifests_use_are_the_ones_the_readme_creates():
    text = "".join((DEPLOY / n).read_text(encoding="utf-8") for n in
                   ("kuberay-raycluster.yaml", "kubernetes-service.yaml"))
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for name, key in set(re.findall(r"secretKeyRef: \{name: ([\w-]+), key: ([\w-]+)\}", text)):
        assert re.search(rf"kubectl create secret generic {name}\b[^\n]*--from-literal={key}=", readme), name


# ------------------------------------------------------------------ variables and the Dockerfile
def test_every_autodistill_variable_set_is_one_the_code_reads():
    library = variables_read_by_library()
    texts = {p.name: p.read_text(encoding="utf-8") for p in [*DEPLOY.glob("*.yaml"), ROOT / "Dockerfile"]}
    service_vars = {}
    for name, text in texts.items():
        for var in variables_set_in(text):
            if var.startswith(ENV_PREFIX):
                service_vars[var] = name
            elif var == STORAGE_VAR and var not in library:
                continue   # checked by test_storage_variable_is_the_one_the_search_reads
            else:
                assert var in library, f"{name} sets {var}, which nothing in autodistill/ reads"
    fields = set(ServiceSettings.model_fields)
    unknown = {v: n for v, n in service_vars.items() if v[len(ENV_PREFIX):].lower() not in fields}
    assert not unknown, f"not service settings: {unknown}"
    assert {"AUTODISTILL_SERVICE_RAY_ADDRESS", "AUTODISTILL_SERVICE_DATABASE_URL"} <= set(service_vars)


def test_storage_variable_is_the_one_the_search_reads():
    read = {v for v in variables_read_by_library() if v.startswith("AUTODISTILL_STORAGE")}
    if not read:
        pytest.skip("`autodistill search` reads no storage-URI variable yet (issue 21 items 1-3 add it); "
                    f"deploy/ sets {STORAGE_VAR}")
    assert read == {STORAGE_VAR}, f"the search reads {sorted(read)}, deploy/ sets {STORAGE_VAR}"


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_dockerfile_serves_every_role_and_copies_what_exists():
    text = dockerfile()
    # `ray up` starts node containers as `docker run IMAGE bash` and KubeRay sets the command: no ENTRYPOINT
    assert not re.search(r"^ENTRYPOINT", text, re.M)
    assert re.search(r'^CMD \["autodistill", "serve", "--host", "0.0.0.0"', text, re.M)
    for tool in ("rsync", "openssh-client", "wget", "procps"):   # ray up (rsync, ssh), KubeRay probes (wget)
        assert tool in text
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for src in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / src).exists(), src
        assert not any(src == i or src.startswith(i.rstrip("/") + "/") for i in ignored), f"{src} is ignored"
    # the image's service variables pass the settings model (paths as the image lays them out)
    env = dict(re.findall(r"(AUTODISTILL_SERVICE_[A-Z_]+)=(\S+)", text))
    settings = ServiceSettings.from_env(env)
    assert settings.state_dir == Path(STATE_DIR) and str(settings.model_dir) == "/app/meta_dataset/model"
    # a refit in the image starts from the records the committed model names (service.recommend.base_record_paths)
    sidecar = json.loads((ROOT / "meta_dataset" / "model" / "model.json").read_text(encoding="utf-8"))
    copied = set(re.findall(r"^COPY (\S+)", text, re.M))
    assert settings.base_records is None and set(sidecar["info"]["records"]) <= copied


def test_dockerfile_pins_the_torch_of_pyproject_and_refuses_a_cuda_torch_for_cpu():
    text = dockerfile()
    pin = re.search(r'"(torch==[\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert text.count(f'"{pin}"') == 2   # the torch layer and the install of the package
    assert "ARG TORCH_VARIANT=cpu" in text and "TORCH_VARIANT=cpu but this torch is built for CUDA" in text


def torch_guard() -> str:
    """The Python the Dockerfile runs after installing torch (continuation lines joined as the builder does)."""
    joined = dockerfile().replace("\\\n", "")
    return re.search(r'python -c "(import sys, torch; c = torch\.version\.cuda.*?)"\n', joined).group(1)


def test_the_torch_guard_accepts_only_the_variant_asked_for():
    import json
    import subprocess
    import sys

    import torch
    # one interpreter (one torch import) runs the guard for both variants and reports how each ended
    runner = ("import json, sys\nout = {}\nfor v in ('cpu', 'cu126'):\n"
              "    try:\n        exec(sys.argv[1].replace('$TORCH_VARIANT', v)); out[v] = None\n"
              "    except SystemExit as e:\n        out[v] = None if e.code in (0, None) else str(e.code)\n"
              "print(json.dumps(out))")
    run = subprocess.run([sys.executable, "-c", runner, torch_guard()], capture_output=True, text=True, timeout=120)
    verdict = json.loads(run.stdout.splitlines()[-1])
    cpu_torch = torch.version.cuda is None
    assert (verdict["cpu"] is None) == cpu_torch and (verdict["cu126"] is None) != cpu_torch, verdict
    refused = verdict["cu126"] if cpu_torch else verdict["cpu"]
    assert "but this torch" in refused and "TORCH_INDEX_URL" in refused
