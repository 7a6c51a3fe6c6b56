"""Bicep and Terraform declare the same fleet: the same resources and the same worker scale rule.

Run: python3 -m unittest discover -s infra/tests (needs python-hcl2; scripts/check-infra.sh
installs it). Bicep is read with a small parser for the few constructs the template uses.
"""

import pathlib
import re
import unittest

import hcl2

INFRA = pathlib.Path(__file__).resolve().parent.parent
BICEP = (INFRA / "bicep" / "main.bicep").read_text()

# Bicep resource type -> Terraform resource type. Bicep's blobServices and fileServices are
# parents that Terraform folds into the storage account; Terraform creates the resource group
# (and a random name suffix) that the Bicep deployment is given.
EQUIVALENT = {
    "Microsoft.OperationalInsights/workspaces": "azurerm_log_analytics_workspace",
    "Microsoft.Storage/storageAccounts": "azurerm_storage_account",
    "Microsoft.Storage/storageAccounts/blobServices/containers": "azurerm_storage_container",
    "Microsoft.Storage/storageAccounts/fileServices/shares": "azurerm_storage_share",
    "Microsoft.ManagedIdentity/userAssignedIdentities": "azurerm_user_assigned_identity",
    "Microsoft.Authorization/roleAssignments": "azurerm_role_assignment",
    "Microsoft.App/managedEnvironments": "azurerm_container_app_environment",
    "Microsoft.App/managedEnvironments/storages": "azurerm_container_app_environment_storage",
    "Microsoft.App/containerApps": "azurerm_container_app",
    "Microsoft.App/jobs": "azurerm_container_app_job",
}
BICEP_ONLY = {"Microsoft.Storage/storageAccounts/blobServices", "Microsoft.Storage/storageAccounts/fileServices"}
TERRAFORM_ONLY = {"azurerm_resource_group", "random_string"}


def terraform():
    merged = {"resource": [], "variable": []}
    for path in sorted((INFRA / "terraform").glob("*.tf")):
        with path.open() as f:
            parsed = hcl2.load(f)
        for key in merged:
            merged[key].extend(parsed.get(key, []))
    return merged


def terraform_resources(tf):
    """(type, name) of every Terraform resource."""
    return [(rtype, name) for block in tf["resource"] for rtype, named in block.items() for name in named]


def bicep_resources():
    """(symbol, type) of every Bicep resource."""
    return re.findall(r"^resource (\w+) '([^@']+)@[^']+'", BICEP, re.MULTILINE)


def bicep_block(symbol):
    start = re.search(rf"^resource {symbol} ", BICEP, re.MULTILINE).start()
    end = re.search(r"^}", BICEP[start:], re.MULTILINE).end()
    return BICEP[start : start + end]


def terraform_resource(tf, rtype, name):
    for block in tf["resource"]:
        if rtype in block and name in block[rtype]:
            return block[rtype][name]
    raise KeyError(f"{rtype}.{name}")


def first(value):
    """python-hcl2 wraps nested blocks in lists."""
    return value[0] if isinstance(value, list) else value


def unquote(value):
    """An attribute's value: python-hcl2 8 also wraps attributes in lists and keeps quotes."""
    value = first(value)
    return value.strip('"') if isinstance(value, str) else value


class Parity(unittest.TestCase):
    def setUp(self):
        self.tf = terraform()

    def test_same_resources(self):
        bicep = sorted(EQUIVALENT[t] for _, t in bicep_resources() if t not in BICEP_ONLY)
        unknown = [t for _, t in bicep_resources() if t not in EQUIVALENT and t not in BICEP_ONLY]
        self.assertEqual(unknown, [], "Bicep declares resources with no Terraform equivalent")
        tf = sorted(t for t, _ in terraform_resources(self.tf) if t not in TERRAFORM_ONLY)
        self.assertEqual(bicep, tf)

    def test_same_container_apps(self):
        bicep_apps = sorted(
            re.search(r"name: '\$\{prefix\}-(\w+)'", bicep_block(symbol)).group(1)
            for symbol, t in bicep_resources()
            if t in ("Microsoft.App/containerApps", "Microsoft.App/jobs")
        )
        tf_apps = sorted(
            name for t, name in terraform_resources(self.tf) if t in ("azurerm_container_app", "azurerm_container_app_job")
        )
        self.assertEqual(bicep_apps, tf_apps)
        self.assertEqual(tf_apps, ["collector", "producer", "rabbitmq", "worker"])

    def test_same_worker_scale_rule(self):
        worker = bicep_block("worker")
        self.assertIn("minReplicas: 0", worker)
        self.assertIn("maxReplicas: maxWorkers", worker)
        self.assertIn("type: 'rabbitmq'", worker)
        self.assertIn("queueName: partitionsQueue", worker)
        self.assertIn("mode: 'QueueLength'", worker)
        self.assertIn("value: string(partitionsPerWorker)", worker)
        self.assertRegex(worker, r"secretRef: 'amqp-url'\s+triggerParameter: 'host'")

        template = first(terraform_resource(self.tf, "azurerm_container_app", "worker")["template"])
        self.assertEqual(unquote(template["min_replicas"]), 0)
        self.assertEqual(unquote(template["max_replicas"]), "${var.max_workers}")
        rule = first(template["custom_scale_rule"])
        self.assertEqual(unquote(rule["custom_rule_type"]), "rabbitmq")
        metadata = {k: unquote(v) for k, v in first(rule["metadata"]).items()}
        self.assertEqual(metadata["queueName"], "${var.partitions_queue}")
        self.assertEqual(metadata["mode"], "QueueLength")
        self.assertEqual(metadata["value"], "${tostring(var.partitions_per_worker)}")
        auth = first(rule["authentication"])
        self.assertEqual((unquote(auth["secret_name"]), unquote(auth["trigger_parameter"])), ("amqp-url", "host"))

    def test_same_parameters_and_defaults(self):
        bicep_params = dict(re.findall(r"^param (\w+) \w+(?: = (.+))?$", BICEP, re.MULTILINE))
        tf_vars = {name: body for block in self.tf["variable"] for name, body in block.items()}
        pairs = {
            "prefix": "prefix",
            "image": "image",
            "dataContainer": "data_container",
            "partitionsQueue": "partitions_queue",
            "maxWorkers": "max_workers",
            "partitionsPerWorker": "partitions_per_worker",
            "useGpu": "use_gpu",
            "rabbitmqUser": "rabbitmq_user",
            "rabbitmqPassword": "rabbitmq_password",
        }
        for bicep_name, tf_name in pairs.items():
            self.assertIn(bicep_name, bicep_params)
            self.assertIn(tf_name, tf_vars)
            bicep_default = bicep_params[bicep_name].strip("'") if bicep_params[bicep_name] else None
            tf_default = tf_vars[tf_name].get("default")
            if bicep_default is not None and tf_default is not None:
                self.assertEqual(str(bicep_default).lower(), str(unquote(tf_default)).lower(), bicep_name)
        self.assertIn("@secure()\nparam rabbitmqPassword", BICEP)
        self.assertTrue(unquote(tf_vars["rabbitmq_password"].get("sensitive")))

    def test_no_storage_key_reaches_an_app(self):
        # The apps get the blob service URL and their identity's client id, never a key.
        for symbol in ("worker", "collector", "producer"):
            self.assertNotIn("listKeys", bicep_block(symbol))
        self.assertNotIn("AccountKey", BICEP)
        for name in ("worker", "collector"):
            app = terraform_resource(self.tf, "azurerm_container_app", name)
            self.assertNotIn("access_key", str(app))
        self.assertNotIn("access_key", str(terraform_resource(self.tf, "azurerm_container_app_job", "producer")))


if __name__ == "__main__":
    unittest.main()
