output "storage_account" {
  value = azurerm_storage_account.data.name
}

output "blob_service_url" {
  value = azurerm_storage_account.data.primary_blob_endpoint
}

output "data_container" {
  value = azurerm_storage_container.data.name
}

output "producer_job" {
  value = azurerm_container_app_job.producer.name
}

output "worker_app" {
  value = azurerm_container_app.worker.name
}

output "collector_app" {
  value = azurerm_container_app.collector.name
}

output "identity_client_id" {
  value = azurerm_user_assigned_identity.fleet.client_id
}

output "resource_group" {
  value = azurerm_resource_group.fleet.name
}
