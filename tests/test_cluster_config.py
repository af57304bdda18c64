"""cluster.yaml passes Ray's own autoscaler schema, and carries what the README promises."""

import copy

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config


@pytest.fixture
def cluster():
    with open("cluster.yaml") as f:
        return yaml.safe_load(f)


def test_cluster_yaml_validates_against_rays_schema(cluster):
    validate_config(prepare_config(copy.deepcopy(cluster)))
    bad = copy.deepcopy(cluster)
    bad["available_node_types"]["gpu-spot"]["colour"] = "red"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_cluster_yaml_has_spot_and_on_demand_gpus_token_auth_and_installs_the_project(cluster):
    types = cluster["available_node_types"]
    spot = [t for t in types.values() if t["node_config"].get("InstanceMarketOptions")]
    on_demand = [n for n, t in types.items()
                 if n != cluster["head_node_type"] and not t["node_config"].get(
                     "InstanceMarketOptions")]
    assert spot and on_demand
    assert all(t.get("min_workers", 0) == 0 for t in types.values())  # scale to zero when idle
    assert "~/.ray/auth_token" in cluster["file_mounts"]
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token" in c for c in cluster[commands])
    assert any("pip install -e ~/raypoison" in c for c in cluster["setup_commands"])
