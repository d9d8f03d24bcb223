// Managed identities bound to Kubernetes ServiceAccounts through the cluster's
// OIDC issuer (Azure workload identity).
param location string
param oidcIssuerUrl string
param serviceBusNamespaceName string
param scalerNamespace string
param scalerServiceAccount string
param appNamespace string
@description('ServiceAccounts in appNamespace bound to the applications\' identity (deploy/flux/apps/base/<app>/serviceaccount.yaml).')
param appServiceAccounts array
param tags object

resource serviceBusNamespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: serviceBusNamespaceName
}

// blend-scaler's identity: the chart's workloadIdentity.clientId.
resource scalerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-blend-scaler'
  location: location
  tags: tags
}

resource scalerFederatedCredential 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = {
  parent: scalerIdentity
  name: 'aks-${scalerNamespace}-${scalerServiceAccount}'
  properties: {
    issuer: oidcIssuerUrl
    subject: 'system:serviceaccount:${scalerNamespace}:${scalerServiceAccount}'
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}

// Why Data Owner and not a reader role: blend-scaler reads ActiveMessageCount
// from Service Bus's management (ATOM) endpoint on the namespace host
// (GET https://<ns>.servicebus.windows.net/<queue>, $Resources/Queues,
// <topic>/Subscriptions). That endpoint requires the Manage claim: with SAS a
// rule with Manage rights, with Entra ID the "Azure Service Bus Data Owner"
// role. Data Receiver/Sender are refused, and the ARM Reader role only opens
// management.azure.com, which the scaler does not call. Scope: the namespace,
// because one paged $Resources/Queues read replaces per-queue reads
// (docs/servicebus.md, "Requests"); an entity-scoped assignment would make
// that list call fail. See docs/deploy.md for the trade-off.
resource scalerServiceBusDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBusNamespace.id, scalerIdentity.id, 'Azure Service Bus Data Owner')
  scope: serviceBusNamespace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '090c5cfd-751d-490a-894a-3ce6f1109419')
    principalId: scalerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    description: 'blend-scaler reads queue and subscription runtime counts (ATOM management reads need Manage).'
  }
}

// The applications' identity: Dapr's azure-keyvault secret store.
resource workloadIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${appNamespace}-workloads'
  location: location
  tags: tags
}

// One credential per app ServiceAccount. Azure refuses concurrent writes of
// federated credentials on one identity, hence batchSize 1.
@batchSize(1)
resource workloadFederatedCredentials 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = [for sa in appServiceAccounts: {
  parent: workloadIdentity
  name: 'aks-${appNamespace}-${sa}'
  properties: {
    issuer: oidcIssuerUrl
    subject: 'system:serviceaccount:${appNamespace}:${sa}'
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}]

resource orderProcessingQueue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' existing = {
  parent: serviceBusNamespace
  name: 'order-processing'
}

// The apps' identity (order-processor receives, the dead-letter processor
// receives from the DLQ and re-sends): data-plane roles on this queue only.
var serviceBusDataReceiver = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
var serviceBusDataSender = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'

resource queueRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in [
  serviceBusDataReceiver
  serviceBusDataSender
]: {
  name: guid(orderProcessingQueue.id, workloadIdentity.id, role)
  scope: orderProcessingQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
    principalId: workloadIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}]

output scalerIdentityClientId string = scalerIdentity.properties.clientId
output scalerIdentityPrincipalId string = scalerIdentity.properties.principalId
output workloadIdentityClientId string = workloadIdentity.properties.clientId
output workloadIdentityPrincipalId string = workloadIdentity.properties.principalId
