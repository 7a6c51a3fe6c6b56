// The CIFAR scoring fleet on Azure Container Apps.
//
//   az group create -n scoring-fleet -l westeurope
//   az deployment group create -g scoring-fleet -f infra/bicep/main.bicep \
//       -p image=<registry>/scoring-fleet:latest rabbitmqPassword=<secret>
//
// Declares: a storage account with the data container; Log Analytics; a Container Apps
// environment (with an optional GPU workload profile); RabbitMQ as an internal container app
// whose data lives on an Azure Files share; the worker app, scaled by KEDA on the partitions
// queue length (0..maxWorkers); the collector app; the producer as a manually started
// Container Apps job; one user-assigned identity with Storage Blob Data Contributor on the
// account (the apps reach blob storage with it, never with a key). infra/terraform declares the
// same; infra/tests/test_parity.py checks that.

@description('Name prefix of every resource (letters and digits).')
@minLength(3)
@maxLength(11)
param prefix string = 'scoringfleet'

@description('Azure region.')
param location string = resourceGroup().location

@description('Container image holding producer, worker and collector (see the Dockerfile).')
param image string

@description('Blob container for the dataset, models and results.')
param dataContainer string = 'fleet'

@description('Queue of partitions; KEDA watches its length.')
param partitionsQueue string = 'scoring.partitions'

@description('Upper bound of worker replicas; KEDA scales between 0 and this.')
@minValue(1)
param maxWorkers int = 10

@description('Partitions waiting in the queue per worker replica before KEDA adds one.')
@minValue(1)
param partitionsPerWorker int = 4

@description('Run workers on a GPU workload profile (NVIDIA T4) with the CUDA image.')
param useGpu bool = false

@description('CUDA variant of the image, used for workers when useGpu is true.')
param gpuImage string = image

@description('RabbitMQ user for the fleet.')
param rabbitmqUser string = 'fleet'

@description('RabbitMQ password for the fleet.')
@secure()
param rabbitmqPassword string

var storageName = toLower('${prefix}${uniqueString(resourceGroup().id)}')
var amqpUrl = 'amqp://${rabbitmqUser}:${rabbitmqPassword}@${prefix}-rabbitmq:5672/%2f'
var blobServiceUrl = 'https://${storage.name}.blob.${environment().suffixes.storage}'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var workerProfile = useGpu ? 'gpu' : 'Consumption'
var commonEnv = [
  {
    name: 'FLEET_STORE'
    value: blobServiceUrl
  }
  {
    name: 'FLEET_CONTAINER'
    value: dataContainer
  }
  {
    name: 'AZURE_CLIENT_ID'
    value: identity.properties.clientId
  }
  {
    name: 'AMQP_URL'
    secretRef: 'amqp-url'
  }
  {
    name: 'PARTITIONS_QUEUE'
    value: partitionsQueue
  }
  {
    name: 'RUST_LOG'
    value: 'info'
  }
  {
    // One JSON object per line: Log Analytics parses the fields.
    name: 'LOG_FORMAT'
    value: 'json'
  }
  {
    name: 'HTTP_PORT'
    value: string(opsPort)
  }
]
// /healthz (alive and not stuck on one partition) restarts a hung worker or collector;
// /readyz (consuming) gates it; /metrics is for a Prometheus scraper.
var opsPort = 8080
var opsProbes = [
  {
    type: 'Liveness'
    httpGet: {
      path: '/healthz'
      port: opsPort
    }
    initialDelaySeconds: 10
    periodSeconds: 30
    failureThreshold: 3
  }
  {
    type: 'Readiness'
    httpGet: {
      path: '/readyz'
      port: opsPort
    }
    periodSeconds: 10
    failureThreshold: 3
  }
]
var consumptionProfile = [
  {
    name: 'Consumption'
    workloadProfileType: 'Consumption'
  }
]
var gpuProfile = [
  {
    name: 'gpu'
    workloadProfileType: 'Consumption-GPU-NC8as-T4'
  }
]
var amqpSecret = [
  {
    name: 'amqp-url'
    value: amqpUrl
  }
]
var cpuWorkerResources = {
  cpu: json('2.0')
  memory: '4Gi'
}
var gpuWorkerResources = {
  cpu: json('8.0')
  memory: '56Gi'
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${prefix}-logs'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:Container Apps on the Consumption profile reach storage over its public endpoint; every request needs Entra ID (managed identity) or the environment's key.
  // checkov:skip=CKV_AZURE_43:The name is prefix + uniqueString(), lower-cased: 3-24 letters and digits; checkov cannot evaluate the expression.
  name: storageName
  location: location
  sku: {
    name: 'Standard_GRS'
  }
  kind: 'StorageV2'
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    // The RabbitMQ share is mounted by the Container Apps environment, which needs the key.
    allowSharedKeyAccess: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource data 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: dataContainer
  properties: {
    publicAccess: 'None'
  }
}

resource fileService 'Microsoft.Storage/storageAccounts/fileServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource rabbitShare 'Microsoft.Storage/storageAccounts/fileServices/shares@2023-05-01' = {
  parent: fileService
  name: 'rabbitmq'
  properties: {
    shareQuota: 16
  }
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${prefix}-identity'
  location: location
}

resource blobAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, storageBlobDataContributor)
  scope: storage
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}

resource env 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: '${prefix}-env'
  location: location
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: logs.properties.customerId
        sharedKey: logs.listKeys().primarySharedKey
      }
    }
    workloadProfiles: useGpu ? concat(consumptionProfile, gpuProfile) : consumptionProfile
  }
}

resource rabbitStorage 'Microsoft.App/managedEnvironments/storages@2024-03-01' = {
  parent: env
  name: 'rabbitmq'
  properties: {
    azureFile: {
      accountName: storage.name
      accountKey: storage.listKeys().keys[0].value
      shareName: rabbitShare.name
      accessMode: 'ReadWrite'
    }
  }
}

// RabbitMQ as an internal app with its data on Azure Files: no public endpoint, survives
// restarts. (Azure has no managed RabbitMQ; Service Bus would need another broker seam.)
resource rabbitmq 'Microsoft.App/containerApps@2024-03-01' = {
  name: '${prefix}-rabbitmq'
  location: location
  properties: {
    environmentId: env.id
    workloadProfileName: 'Consumption'
    configuration: {
      ingress: {
        external: false
        transport: 'tcp'
        targetPort: 5672
        exposedPort: 5672
      }
      secrets: [
        {
          name: 'rabbitmq-password'
          value: rabbitmqPassword
        }
      ]
    }
    template: {
      containers: [
        {
          name: 'rabbitmq'
          image: 'rabbitmq:3.13'
          resources: {
            cpu: json('1.0')
            memory: '2Gi'
          }
          env: [
            {
              name: 'RABBITMQ_DEFAULT_USER'
              value: rabbitmqUser
            }
            {
              name: 'RABBITMQ_DEFAULT_PASS'
              secretRef: 'rabbitmq-password'
            }
          ]
          volumeMounts: [
            {
              volumeName: 'data'
              mountPath: '/var/lib/rabbitmq'
            }
          ]
        }
      ]
      volumes: [
        {
          name: 'data'
          storageType: 'AzureFile'
          storageName: rabbitStorage.name
        }
      ]
      scale: {
        minReplicas: 1
        maxReplicas: 1
      }
    }
  }
}

resource worker 'Microsoft.App/containerApps@2024-03-01' = {
  name: '${prefix}-worker'
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    environmentId: env.id
    workloadProfileName: workerProfile
    configuration: {
      secrets: amqpSecret
    }
    template: {
      containers: [
        {
          name: 'worker'
          image: useGpu ? gpuImage : image
          command: ['worker']
          resources: useGpu ? gpuWorkerResources : cpuWorkerResources
          env: commonEnv
          probes: opsProbes
        }
      ]
      // SIGTERM on scale-in: the worker finishes its partition within this grace period.
      terminationGracePeriodSeconds: 120
      scale: {
        minReplicas: 0
        maxReplicas: maxWorkers
        rules: [
          {
            name: 'partitions-queue'
            custom: {
              type: 'rabbitmq'
              metadata: {
                queueName: partitionsQueue
                mode: 'QueueLength'
                value: string(partitionsPerWorker)
              }
              auth: [
                {
                  secretRef: 'amqp-url'
                  triggerParameter: 'host'
                }
              ]
            }
          }
        ]
      }
    }
  }
  dependsOn: [
    blobAccess
    rabbitmq
  ]
}

resource collector 'Microsoft.App/containerApps@2024-03-01' = {
  name: '${prefix}-collector'
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    environmentId: env.id
    workloadProfileName: 'Consumption'
    configuration: {
      secrets: amqpSecret
    }
    template: {
      containers: [
        {
          name: 'collector'
          image: image
          command: ['collector']
          resources: {
            cpu: json('0.5')
            memory: '1Gi'
          }
          env: commonEnv
          probes: opsProbes
        }
      ]
      terminationGracePeriodSeconds: 120
      scale: {
        minReplicas: 1
        maxReplicas: 1
      }
    }
  }
  dependsOn: [
    blobAccess
    rabbitmq
  ]
}

// The producer runs on demand: `az containerapp job start -n <prefix>-producer -g <group>`.
resource producer 'Microsoft.App/jobs@2024-03-01' = {
  name: '${prefix}-producer'
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    environmentId: env.id
    workloadProfileName: 'Consumption'
    configuration: {
      triggerType: 'Manual'
      replicaTimeout: 3600
      replicaRetryLimit: 0
      manualTriggerConfig: {
        parallelism: 1
        replicaCompletionCount: 1
      }
      secrets: amqpSecret
    }
    template: {
      containers: [
        {
          name: 'producer'
          image: image
          command: ['producer', '--wait']
          resources: {
            cpu: json('1.0')
            memory: '2Gi'
          }
          env: commonEnv
        }
      ]
    }
  }
  dependsOn: [
    blobAccess
    rabbitmq
  ]
}

output storageAccount string = storage.name
output blobServiceUrl string = blobServiceUrl
output dataContainer string = data.name
output producerJob string = producer.name
output workerApp string = worker.name
output collectorApp string = collector.name
output identityClientId string = identity.properties.clientId
