// Managed identities bound to Kubernetes ServiceAccounts through the cluster's
// OIDC issuer (Azure workload identity).
param location string
param oidcIssuerUrl string
param serviceBusNamespaceName string
param scalerNamespace string
param scalerServiceAccount string
param appNamespace string
param appServiceAccount string
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
// because one paged $Resources/Queues read replaces per-queue reads (SPEC 5);
// an entity-scoped assignment would make that list call fail. See
// docs/deploy.md for the trade-off.
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

resource workloadFederatedCredential 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = {
  parent: workloadIdentity
  name: 'aks-${appNamespace}-${appServiceAccount}'
  properties: {
    issuer: oidcIssuerUrl
    subject: 'system:serviceaccount:${appNamespace}:${appServiceAccount}'
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}

output scalerIdentityClientId string = scalerIdentity.properties.clientId
output scalerIdentityPrincipalId string = scalerIdentity.properties.principalId
output workloadIdentityClientId string = workloadIdentity.properties.clientId
output workloadIdentityPrincipalId string = workloadIdentity.properties.principalId
