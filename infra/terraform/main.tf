# The CIFAR scoring fleet on Azure Container Apps: the same resources as infra/bicep/main.bicep
# (infra/tests/test_parity.py checks that).
#
#   terraform -chdir=infra/terraform init
#   terraform -chdir=infra/terraform apply -var image=<registry>/scoring-fleet:latest \
#       -var rabbitmq_password=<secret>

locals {
  amqp_url                      = "amqp://${var.rabbitmq_user}:${var.rabbitmq_password}@${var.prefix}-rabbitmq:5672/%2f"
  storage_blob_data_contributor = "Storage Blob Data Contributor"
  worker_profile                = var.use_gpu ? "gpu" : "Consumption"
  worker_image                  = var.use_gpu && var.gpu_image != "" ? var.gpu_image : var.image
  common_env = {
    FLEET_STORE      = trimsuffix(azurerm_storage_account.data.primary_blob_endpoint, "/")
    FLEET_CONTAINER  = var.data_container
    AZURE_CLIENT_ID  = azurerm_user_assigned_identity.fleet.client_id
    PARTITIONS_QUEUE = var.partitions_queue
    RUST_LOG         = "info"
    # One JSON object per line: Log Analytics parses the fields.
    LOG_FORMAT = "json"
    HTTP_PORT  = tostring(local.ops_port)
  }
  # /healthz (alive and not stuck on one partition) restarts a hung worker or collector;
  # /readyz (consuming) gates it; /metrics is for a Prometheus scraper.
  ops_port = 8080
}

resource "azurerm_resource_group" "fleet" {
  name     = var.resource_group_name
  location = var.location
}

resource "random_string" "storage_suffix" {
  length  = 8
  upper   = false
  special = false
}

resource "azurerm_log_analytics_workspace" "fleet" {
  name                = "${var.prefix}-logs"
  location            = azurerm_resource_group.fleet.location
  resource_group_name = azurerm_resource_group.fleet.name
  sku                 = "PerGB2018"
  retention_in_days   = 30
}

resource "azurerm_storage_account" "data" {
  # checkov:skip=CKV_AZURE_33:Queue service logging: the account holds no queues.
  # checkov:skip=CKV_AZURE_59:Public network access stays on: Container Apps on the Consumption profile reach storage over its public endpoint; access needs Entra ID (managed identity).
  # checkov:skip=CKV2_AZURE_1:Customer-managed keys are a policy choice of the subscription owner; Microsoft-managed keys encrypt at rest.
  # checkov:skip=CKV2_AZURE_33:Private endpoints need a VNet-integrated environment, a deployment option beyond this template.
  # checkov:skip=CKV2_AZURE_40:Shared keys stay enabled because the Container Apps environment mounts the RabbitMQ file share with the account key; the apps themselves use managed identity.
  name                            = "${var.prefix}${random_string.storage_suffix.result}"
  location                        = azurerm_resource_group.fleet.location
  resource_group_name             = azurerm_resource_group.fleet.name
  account_tier                    = "Standard"
  account_replication_type        = "GRS"
  account_kind                    = "StorageV2"
  min_tls_version                 = "TLS1_2"
  https_traffic_only_enabled      = true
  allow_nested_items_to_be_public = false
  shared_access_key_enabled       = true

  blob_properties {
    delete_retention_policy {
      days = 7
    }
  }

  sas_policy {
    expiration_period = "01.00:00:00"
  }
}

resource "azurerm_storage_container" "data" {
  # checkov:skip=CKV2_AZURE_21:Blob read logging is a diagnostic-settings choice of the subscription owner.
  name                  = var.data_container
  storage_account_id    = azurerm_storage_account.data.id
  container_access_type = "private"
}

resource "azurerm_storage_share" "rabbitmq" {
  name               = "rabbitmq"
  storage_account_id = azurerm_storage_account.data.id
  quota              = 16
}

resource "azurerm_user_assigned_identity" "fleet" {
  name                = "${var.prefix}-identity"
  location            = azurerm_resource_group.fleet.location
  resource_group_name = azurerm_resource_group.fleet.name
}

resource "azurerm_role_assignment" "blob_access" {
  scope                = azurerm_storage_account.data.id
  role_definition_name = local.storage_blob_data_contributor
  principal_id         = azurerm_user_assigned_identity.fleet.principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_container_app_environment" "fleet" {
  name                       = "${var.prefix}-env"
  location                   = azurerm_resource_group.fleet.location
  resource_group_name        = azurerm_resource_group.fleet.name
  log_analytics_workspace_id = azurerm_log_analytics_workspace.fleet.id

  workload_profile {
    name                  = "Consumption"
    workload_profile_type = "Consumption"
  }

  dynamic "workload_profile" {
    for_each = var.use_gpu ? [1] : []
    content {
      name                  = "gpu"
      workload_profile_type = "Consumption-GPU-NC8as-T4"
    }
  }
}

resource "azurerm_container_app_environment_storage" "rabbitmq" {
  name                         = "rabbitmq"
  container_app_environment_id = azurerm_container_app_environment.fleet.id
  account_name                 = azurerm_storage_account.data.name
  share_name                   = azurerm_storage_share.rabbitmq.name
  access_key                   = azurerm_storage_account.data.primary_access_key
  access_mode                  = "ReadWrite"
}

# RabbitMQ as an internal app with its data on Azure Files: no public endpoint, survives
# restarts. (Azure has no managed RabbitMQ; Service Bus would need another broker seam.)
resource "azurerm_container_app" "rabbitmq" {
  name                         = "${var.prefix}-rabbitmq"
  container_app_environment_id = azurerm_container_app_environment.fleet.id
  resource_group_name          = azurerm_resource_group.fleet.name
  revision_mode                = "Single"
  workload_profile_name        = "Consumption"

  secret {
    name  = "rabbitmq-password"
    value = var.rabbitmq_password
  }

  ingress {
    external_enabled = false
    transport        = "tcp"
    target_port      = 5672
    exposed_port     = 5672
    traffic_weight {
      latest_revision = true
      percentage      = 100
    }
  }

  template {
    min_replicas = 1
    max_replicas = 1

    container {
      name   = "rabbitmq"
      image  = "rabbitmq:3.13"
      cpu    = 1.0
      memory = "2Gi"
      env {
        name  = "RABBITMQ_DEFAULT_USER"
        value = var.rabbitmq_user
      }
      env {
        name        = "RABBITMQ_DEFAULT_PASS"
        secret_name = "rabbitmq-password"
      }
      volume_mounts {
        name = "data"
        path = "/var/lib/rabbitmq"
      }
    }

    volume {
      name         = "data"
      storage_type = "AzureFile"
      storage_name = azurerm_container_app_environment_storage.rabbitmq.name
    }
  }
}

resource "azurerm_container_app" "worker" {
  name                         = "${var.prefix}-worker"
  container_app_environment_id = azurerm_container_app_environment.fleet.id
  resource_group_name          = azurerm_resource_group.fleet.name
  revision_mode                = "Single"
  workload_profile_name        = local.worker_profile

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.fleet.id]
  }

  secret {
    name  = "amqp-url"
    value = local.amqp_url
  }

  template {
    min_replicas = 0
    max_replicas = var.max_workers
    # SIGTERM on scale-in: the worker finishes its partition within this grace period.
    termination_grace_period_seconds = 120

    container {
      name    = "worker"
      image   = local.worker_image
      command = ["worker"]
      cpu     = var.use_gpu ? 8.0 : 2.0
      memory  = var.use_gpu ? "56Gi" : "4Gi"
      dynamic "env" {
        for_each = local.common_env
        content {
          name  = env.key
          value = env.value
        }
      }
      env {
        name        = "AMQP_URL"
        secret_name = "amqp-url"
      }
      liveness_probe {
        transport               = "HTTP"
        path                    = "/healthz"
        port                    = local.ops_port
        initial_delay           = 10
        interval_seconds        = 30
        failure_count_threshold = 3
      }
      readiness_probe {
        transport               = "HTTP"
        path                    = "/readyz"
        port                    = local.ops_port
        interval_seconds        = 10
        failure_count_threshold = 3
      }
    }

    custom_scale_rule {
      name             = "partitions-queue"
      custom_rule_type = "rabbitmq"
      metadata = {
        queueName = var.partitions_queue
        mode      = "QueueLength"
        value     = tostring(var.partitions_per_worker)
      }
      authentication {
        secret_name       = "amqp-url"
        trigger_parameter = "host"
      }
    }
  }

  depends_on = [azurerm_role_assignment.blob_access, azurerm_container_app.rabbitmq]
}

resource "azurerm_container_app" "collector" {
  name                         = "${var.prefix}-collector"
  container_app_environment_id = azurerm_container_app_environment.fleet.id
  resource_group_name          = azurerm_resource_group.fleet.name
  revision_mode                = "Single"
  workload_profile_name        = "Consumption"

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.fleet.id]
  }

  secret {
    name  = "amqp-url"
    value = local.amqp_url
  }

  template {
    min_replicas                     = 1
    max_replicas                     = 1
    termination_grace_period_seconds = 120

    container {
      name    = "collector"
      image   = var.image
      command = ["collector"]
      cpu     = 0.5
      memory  = "1Gi"
      dynamic "env" {
        for_each = local.common_env
        content {
          name  = env.key
          value = env.value
        }
      }
      env {
        name        = "AMQP_URL"
        secret_name = "amqp-url"
      }
      liveness_probe {
        transport               = "HTTP"
        path                    = "/healthz"
        port                    = local.ops_port
        initial_delay           = 10
        interval_seconds        = 30
        failure_count_threshold = 3
      }
      readiness_probe {
        transport               = "HTTP"
        path                    = "/readyz"
        port                    = local.ops_port
        interval_seconds        = 10
        failure_count_threshold = 3
      }
    }
  }

  depends_on = [azurerm_role_assignment.blob_access, azurerm_container_app.rabbitmq]
}

# The producer runs on demand: `az containerapp job start -n <prefix>-producer -g <group>`.
resource "azurerm_container_app_job" "producer" {
  name                         = "${var.prefix}-producer"
  location                     = azurerm_resource_group.fleet.location
  resource_group_name          = azurerm_resource_group.fleet.name
  container_app_environment_id = azurerm_container_app_environment.fleet.id
  workload_profile_name        = "Consumption"
  replica_timeout_in_seconds   = 3600
  replica_retry_limit          = 0

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.fleet.id]
  }

  secret {
    name  = "amqp-url"
    value = local.amqp_url
  }

  manual_trigger_config {
    parallelism              = 1
    replica_completion_count = 1
  }

  template {
    container {
      name    = "producer"
      image   = var.image
      command = ["producer", "--wait"]
      cpu     = 1.0
      memory  = "2Gi"
      dynamic "env" {
        for_each = local.common_env
        content {
          name  = env.key
          value = env.value
        }
      }
      env {
        name        = "AMQP_URL"
        secret_name = "amqp-url"
      }
    }
  }

  depends_on = [azurerm_role_assignment.blob_access, azurerm_container_app.rabbitmq]
}
