variable "resource_group_name" {
  description = "Resource group to create and deploy into."
  type        = string
  default     = "scoring-fleet"
}

variable "location" {
  description = "Azure region."
  type        = string
  default     = "westeurope"
}

variable "prefix" {
  description = "Name prefix of every resource (letters and digits)."
  type        = string
  default     = "scoringfleet"
  validation {
    condition     = can(regex("^[a-z0-9]{3,11}$", var.prefix))
    error_message = "prefix must be 3 to 11 lower-case letters or digits."
  }
}

variable "image" {
  description = "Container image holding producer, worker and collector (see the Dockerfile)."
  type        = string
}

variable "data_container" {
  description = "Blob container for the dataset, models and results."
  type        = string
  default     = "fleet"
}

variable "partitions_queue" {
  description = "Queue of partitions; KEDA watches its length."
  type        = string
  default     = "scoring.partitions"
}

variable "max_workers" {
  description = "Upper bound of worker replicas; KEDA scales between 0 and this."
  type        = number
  default     = 10
}

variable "partitions_per_worker" {
  description = "Partitions waiting in the queue per worker replica before KEDA adds one."
  type        = number
  default     = 4
}

variable "use_gpu" {
  description = "Run workers on a GPU workload profile (NVIDIA T4) with the CUDA image."
  type        = bool
  default     = false
}

variable "gpu_image" {
  description = "CUDA variant of the image, used for workers when use_gpu is true (defaults to image)."
  type        = string
  default     = ""
}

variable "rabbitmq_user" {
  description = "RabbitMQ user for the fleet."
  type        = string
  default     = "fleet"
}

variable "rabbitmq_password" {
  description = "RabbitMQ password for the fleet."
  type        = string
  sensitive   = true
}
