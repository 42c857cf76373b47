// fhirsync on Azure: Container Apps running `fhirsync serve` as several
// replicas, the Service Bus namespace and its two session-enabled queues,
// PostgreSQL Flexible Server, a user-assigned managed identity holding only
// the Service Bus data roles it needs (per queue) and read access to its own
// Key Vault secrets, and the Key Vault for the secrets that remain.
//
// docs/deploy.md ("Azure") walks through a deployment and what is left to do
// by hand (the Dataverse application user, the FHIR service's role, Event
// Grid). deploy/azure_test.go keeps the queue properties in step with what
// the code expects.
//
// Each resource names its type's API version; the reference pages are
// https://learn.microsoft.com/azure/templates/<provider>/<version>/<type>.

targetScope = 'resourceGroup'

@description('Azure region of every resource.')
param location string = resourceGroup().location

@description('Prefix of resource names (lower-case letters and digits).')
@minLength(3)
@maxLength(12)
param namePrefix string = 'fhirsync'

@description('The fhirsync container image, pinned by digest (registry/fhirsync@sha256:...).')
param image string

@description('Login server of a private registry the identity may pull from (AcrPull), or empty for a public image.')
param registryServer string = ''

@description('Replicas of fhirsync. They compete for the queues and share PostgreSQL; database leases keep each change-feed poller and scheduled job on one replica at a time.')
@minValue(1)
@maxValue(10)
param replicas int = 3

@description('FHIR base URL, e.g. https://ws-fhir.fhir.azurehealthcareapis.com.')
param fhirBaseUrl string

@description('Name of the Azure Health Data Services FHIR service whose events are accepted (the events\' data.resourceFhirAccount).')
param fhirAccount string

@description('Dataverse environment URL, e.g. https://contoso.crm.dynamics.com.')
param crmBaseUrl string

@description('FHIR resource types the _history poller reads, comma-separated.')
param fhirHistoryTypes string = 'Patient'

@description('Dataverse tables followed by change tracking, comma-separated logical names.')
param crmTrackingEntities string = 'contact'

@description('Entra ID application (client) id of the Dataverse application user when it signs in with a client secret; empty signs in as the managed identity (create the application user for its client id).')
param dataverseClientId string = ''

@description('Client secret of that application; stored in Key Vault. Empty: the managed identity signs in to Dataverse.')
@secure()
param dataverseClientSecret string = ''

@description('PostgreSQL administrator login.')
param postgresAdminLogin string = 'fhirsync'

@description('PostgreSQL administrator password; stored in Key Vault inside the database URL.')
@secure()
param postgresAdminPassword string

@description('PostgreSQL compute size.')
param postgresSkuName string = 'Standard_B2s'

@allowed([
  'Burstable'
  'GeneralPurpose'
  'MemoryOptimized'
])
param postgresSkuTier string = 'Burstable'

@description('Queue of FHIR change notices (config queue.fhir_changes).')
param fhirChangesQueue string = 'fhir-changes'

@description('Queue of CRM change notices (config queue.crm_changes).')
param crmChangesQueue string = 'crm-changes'

var suffix = uniqueString(resourceGroup().id, namePrefix)
var queueNames = [
  fhirChangesQueue
  crmChangesQueue
]

// The queue properties the code relies on (DESIGN.md, "Queues"):
// - requiresSession: the adapter sends every message with a session id (its
//   record key) and receives through session receivers, for per-record
//   order; `fhirsync doctor` fails a queue without sessions. It can only be
//   set when a queue is created.
// - maxDeliveryCount 10: the Service Bus adapter counts the retries it
//   schedules itself against 10 (servicebus.Config.MaxDeliveryCount, "must
//   match the queue's setting"), and the agent dead-letters a retryable
//   failure as attempts_exhausted at its 10th delivery (agent.max_attempts).
// - lockDuration 1 minute: the adapter renews locks in the background while
//   a message is processed (up to 5 minutes), so a crashed replica's
//   messages come back after a minute.
// - requiresDuplicateDetection with a 10-minute window: notices carry stable
//   message ids, so a backfill page re-sent after a crash is dropped.
// - deadLetteringOnMessageExpiration: a notice that waited past its time to
//   live is kept as a dead letter (listed and redriven in the admin app),
//   never dropped.
var queueProperties = {
  requiresSession: true
  maxDeliveryCount: 10
  lockDuration: 'PT1M'
  requiresDuplicateDetection: true
  duplicateDetectionHistoryTimeWindow: 'PT10M'
  deadLetteringOnMessageExpiration: true
  defaultMessageTimeToLive: 'P14D'
  enableBatchedOperations: true
  enablePartitioning: false
  maxSizeInMegabytes: 1024
}

// Built-in role definition ids, from
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/integration
// (Azure Service Bus Data Sender, Azure Service Bus Data Receiver) and
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/security
// (Key Vault Secrets User) and .../built-in-roles/containers (AcrPull).
var serviceBusDataSender = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
var serviceBusDataReceiver = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var acrPull = '7f951dda-4ed3-4680-a7ca-43fe172d538d'

var useClientSecret = !empty(dataverseClientSecret)

// Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31
// https://learn.microsoft.com/azure/templates/microsoft.managedidentity/2023-01-31/userassignedidentities
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${namePrefix}-id'
  location: location
}

// Microsoft.OperationalInsights/workspaces@2023-09-01
// https://learn.microsoft.com/azure/templates/microsoft.operationalinsights/2023-09-01/workspaces
resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${namePrefix}-logs-${suffix}'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

// Microsoft.ServiceBus/namespaces@2024-01-01
// https://learn.microsoft.com/azure/templates/microsoft.servicebus/2024-01-01/namespaces
// Standard is the lowest tier with sessions and duplicate detection (256 KB
// messages; notices are small). Shared access keys are off: only Entra ID.
resource serviceBus 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: '${namePrefix}-sb-${suffix}'
  location: location
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
  }
}

// Microsoft.ServiceBus/namespaces/queues@2024-01-01
// https://learn.microsoft.com/azure/templates/microsoft.servicebus/2024-01-01/namespaces/queues
resource queues 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = [for name in queueNames: {
  parent: serviceBus
  name: name
  properties: queueProperties
}]

// Microsoft.Authorization/roleAssignments@2022-04-01
// https://learn.microsoft.com/azure/templates/microsoft.authorization/2022-04-01/roleassignments
// Each queue, not the namespace: the agent sends to both queues (pollers,
// webhooks, delayed retries, redrives) and receives from both.
resource queueSenders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in queueNames: {
  name: guid(queues[i].id, identity.id, serviceBusDataSender)
  scope: queues[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSender)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}]

resource queueReceivers 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in queueNames: {
  name: guid(queues[i].id, identity.id, serviceBusDataReceiver)
  scope: queues[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataReceiver)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}]

// Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01
// https://learn.microsoft.com/azure/templates/microsoft.dbforpostgresql/2024-08-01/flexibleservers
// Password authentication: fhirsync connects with a database URL and does
// not refresh Entra ID tokens as passwords. The URL lives in Key Vault.
resource postgres 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: '${namePrefix}-pg-${suffix}'
  location: location
  sku: {
    name: postgresSkuName
    tier: postgresSkuTier
  }
  properties: {
    version: '16'
    administratorLogin: postgresAdminLogin
    administratorLoginPassword: postgresAdminPassword
    authConfig: {
      activeDirectoryAuth: 'Disabled'
      passwordAuth: 'Enabled'
    }
    storage: {
      storageSizeGB: 32
      autoGrow: 'Enabled'
    }
    backup: {
      backupRetentionDays: 14
      geoRedundantBackup: 'Disabled'
    }
    highAvailability: {
      mode: 'Disabled'
    }
  }
}

// Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01
// https://learn.microsoft.com/azure/templates/microsoft.dbforpostgresql/2024-08-01/flexibleservers/databases
resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = {
  parent: postgres
  name: 'fhirsync'
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
}

// Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2024-08-01
// https://learn.microsoft.com/azure/templates/microsoft.dbforpostgresql/2024-08-01/flexibleservers/firewallrules
// 0.0.0.0 to 0.0.0.0 admits connections from Azure services (the Container
// Apps environment has no fixed address without a virtual network).
resource postgresFromAzure 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2024-08-01' = {
  parent: postgres
  name: 'AllowAzureServices'
  properties: {
    startIpAddress: '0.0.0.0'
    endIpAddress: '0.0.0.0'
  }
}

// Microsoft.KeyVault/vaults@2023-07-01
// https://learn.microsoft.com/azure/templates/microsoft.keyvault/2023-07-01/vaults
resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: take('${namePrefix}kv${suffix}', 24)
  location: location
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
  }
}

// Microsoft.KeyVault/vaults/secrets@2023-07-01
// https://learn.microsoft.com/azure/templates/microsoft.keyvault/2023-07-01/vaults/secrets
resource databaseUrl 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'database-url'
  properties: {
    value: 'postgres://${uriComponent(postgresAdminLogin)}:${uriComponent(postgresAdminPassword)}@${postgres.properties.fullyQualifiedDomainName}:5432/${database.name}?sslmode=require'
  }
}

resource crmClientSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (useClientSecret) {
  parent: vault
  name: 'crm-client-secret'
  properties: {
    value: dataverseClientSecret
  }
}

// The identity reads these two secrets only, not the whole vault.
resource databaseUrlReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(databaseUrl.id, identity.id, keyVaultSecretsUser)
  scope: databaseUrl
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource crmClientSecretReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (useClientSecret) {
  name: guid(vault.id, 'crm-client-secret', identity.id, keyVaultSecretsUser)
  scope: crmClientSecret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Microsoft.ContainerRegistry/registries@2023-07-01 (existing), for AcrPull
// https://learn.microsoft.com/azure/templates/microsoft.containerregistry/2023-07-01/registries
resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = if (!empty(registryServer)) {
  name: first(split(registryServer, '.'))
}

resource registryPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(registryServer)) {
  name: guid(resourceGroup().id, registryServer, identity.id, acrPull)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPull)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Microsoft.App/managedEnvironments@2024-03-01
// https://learn.microsoft.com/azure/templates/microsoft.app/2024-03-01/managedenvironments
resource containerEnv 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: '${namePrefix}-env'
  location: location
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: logs.properties.customerId
        sharedKey: logs.listKeys().primarySharedKey
      }
    }
  }
}

var appName = '${namePrefix}-app'
var serviceBusHost = split(split(serviceBus.properties.serviceBusEndpoint, '//')[1], ':')[0]

var baseEnv = [
  { name: 'FHIRSYNC_LISTEN', value: '0.0.0.0:8080' }
  { name: 'FHIRSYNC_METRICS_LISTEN', value: '0.0.0.0:9090' }
  { name: 'FHIRSYNC_DATA_DIR', value: '/var/lib/fhirsync' }
  { name: 'FHIRSYNC_LOG_FORMAT', value: 'json' }
  { name: 'FHIRSYNC_ADMIN_PUBLIC_URL', value: 'https://${appName}.${containerEnv.properties.defaultDomain}' }
  { name: 'FHIRSYNC_DATABASE_URL_FILE', value: '/var/run/secrets/fhirsync/database-url' }
  { name: 'FHIRSYNC_QUEUE_KIND', value: 'servicebus' }
  { name: 'FHIRSYNC_QUEUE_FHIR_CHANGES', value: fhirChangesQueue }
  { name: 'FHIRSYNC_QUEUE_CRM_CHANGES', value: crmChangesQueue }
  { name: 'FHIRSYNC_QUEUE_SERVICE_BUS_NAMESPACE', value: serviceBusHost }
  { name: 'FHIRSYNC_QUEUE_SERVICE_BUS_AUTH_METHOD', value: 'managed_identity' }
  { name: 'FHIRSYNC_QUEUE_SERVICE_BUS_AUTH_CLIENT_ID', value: identity.properties.clientId }
  { name: 'FHIRSYNC_FHIR_BASE_URL', value: fhirBaseUrl }
  { name: 'FHIRSYNC_FHIR_AUTH_METHOD', value: 'managed_identity' }
  { name: 'FHIRSYNC_FHIR_AUTH_CLIENT_ID', value: identity.properties.clientId }
  { name: 'FHIRSYNC_AGENT_FHIR_ACCOUNT', value: fhirAccount }
  { name: 'FHIRSYNC_CRM_BASE_URL', value: crmBaseUrl }
  { name: 'FHIRSYNC_FEEDS_FHIR_HISTORY_TYPES', value: fhirHistoryTypes }
  { name: 'FHIRSYNC_FEEDS_CRM_TRACKING_ENTITIES', value: crmTrackingEntities }
]

var crmEnv = useClientSecret ? [
  { name: 'FHIRSYNC_CRM_AUTH_METHOD', value: 'client_secret' }
  { name: 'FHIRSYNC_CRM_AUTH_TENANT_ID', value: tenant().tenantId }
  { name: 'FHIRSYNC_CRM_AUTH_CLIENT_ID', value: dataverseClientId }
  { name: 'FHIRSYNC_CRM_AUTH_CLIENT_SECRET_FILE', value: '/var/run/secrets/fhirsync/crm-client-secret' }
] : [
  { name: 'FHIRSYNC_CRM_AUTH_METHOD', value: 'managed_identity' }
  { name: 'FHIRSYNC_CRM_AUTH_CLIENT_ID', value: identity.properties.clientId }
]

// Container App secrets are Key Vault references resolved with the identity,
// mounted as files for the FHIRSYNC_…_FILE variables.
var secretNames = concat([
  'database-url'
], useClientSecret ? [
  'crm-client-secret'
] : [])

var appSecrets = concat([
  { name: 'database-url', keyVaultUrl: databaseUrl.properties.secretUri, identity: identity.id }
], useClientSecret ? [
  { name: 'crm-client-secret', keyVaultUrl: '${vault.properties.vaultUri}secrets/crm-client-secret', identity: identity.id }
] : [])

// Microsoft.App/containerApps@2024-03-01
// https://learn.microsoft.com/azure/templates/microsoft.app/2024-03-01/containerapps
resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: appName
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  dependsOn: [
    databaseUrlReader
    crmClientSecretReader
    registryPull
    queueSenders
    queueReceivers
  ]
  properties: {
    managedEnvironmentId: containerEnv.id
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: true
        targetPort: 8080
        transport: 'http'
        allowInsecure: false
      }
      registries: empty(registryServer) ? [] : [
        {
          server: registryServer
          identity: identity.id
        }
      ]
      secrets: appSecrets
    }
    template: {
      containers: [
        {
          name: 'fhirsync'
          image: image
          args: [
            'serve'
          ]
          env: concat(baseEnv, crmEnv)
          resources: {
            cpu: json('0.5')
            memory: '1Gi'
          }
          probes: [
            // Migrations run before the listener opens: up to 5 + 10 x 10 s.
            {
              type: 'Startup'
              httpGet: {
                path: '/healthz'
                port: 8080
              }
              initialDelaySeconds: 5
              periodSeconds: 10
              failureThreshold: 10
            }
            {
              type: 'Liveness'
              httpGet: {
                path: '/healthz'
                port: 8080
              }
              periodSeconds: 10
              timeoutSeconds: 3
              failureThreshold: 3
            }
            {
              type: 'Readiness'
              httpGet: {
                path: '/readyz'
                port: 8080
              }
              periodSeconds: 10
              timeoutSeconds: 5
              failureThreshold: 3
            }
          ]
          volumeMounts: [
            {
              volumeName: 'secrets'
              mountPath: '/var/run/secrets/fhirsync'
            }
            {
              volumeName: 'data'
              mountPath: '/var/lib/fhirsync'
            }
          ]
        }
      ]
      scale: {
        minReplicas: replicas
        maxReplicas: replicas
      }
      volumes: [
        {
          name: 'secrets'
          storageType: 'Secret'
          secrets: [for name in secretNames: {
            secretRef: name
            path: name
          }]
        }
        {
          name: 'data'
          storageType: 'EmptyDir'
        }
      ]
    }
  }
}

@description('Admin app address.')
output url string = 'https://${app.properties.configuration.ingress.fqdn}'

@description('Client id of the managed identity: create the Dataverse application user for it (unless a client secret is used) and grant it the FHIR Data Contributor role on the FHIR service.')
output identityClientId string = identity.properties.clientId

@description('Service Bus namespace host name (queue.service_bus.namespace).')
output serviceBusNamespace string = serviceBusHost

@description('Key Vault holding the database URL and, if given, the Dataverse client secret.')
output keyVaultName string = vault.name
