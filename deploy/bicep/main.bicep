// The seed's platform (Phase 1 AKS cluster, Service Bus, Key Vault, monitoring)
// plus what blend-scaler needs: its managed identity, the federated credential
// that binds it to the chart's ServiceAccount, and the role that lets it read
// Service Bus runtime counts. Deploy into one resource group:
//   az deployment group create -g rg-cloudnative-prod -f main.bicep -p @main.parameters.json
targetScope = 'resourceGroup'

@description('Azure region for every resource.')
param location string = resourceGroup().location

@description('AKS cluster name (the seed\'s).')
param clusterName string = 'aks-cloudnative-prod'

@description('Kubernetes version. The seed pinned 1.29, which AKS no longer supports.')
param kubernetesVersion string = '1.33'

@description('Entra ID group(s) that administer the cluster.')
param adminGroupObjectIds array

@description('Private IP of the egress firewall the cluster routes through (outboundType userDefinedRouting).')
param firewallPrivateIp string

@description('Service Bus namespace name (host <name>.servicebus.windows.net).')
@minLength(6)
@maxLength(50)
param serviceBusNamespaceName string = 'cloudnative-bus'

@allowed([
  'Standard'
  'Premium'
])
@description('Premium gives zone redundancy and private endpoints; topics need at least Standard.')
param serviceBusSku string = 'Premium'

@description('Key Vault name (globally unique).')
@maxLength(24)
param keyVaultName string = 'kv-cloudnative-prod'

@description('Container registry name (globally unique, alphanumeric).')
param acrName string = 'acrcloudnativeprod'

@description('Namespace and ServiceAccount of the blend-scaler release (chart defaults).')
param scalerNamespace string = 'blend-scaler'
param scalerServiceAccount string = 'blend-scaler'

@description('Namespace and ServiceAccounts of the applications (deploy/flux/apps/base/<app>): each gets a federated credential on the applications\' identity.')
param appNamespace string = 'production'
param appServiceAccounts array = [
  'order-service'
  'order-processor'
  'api-gateway'
  'shipping-service'
  'dlq-processor'
]

@description('Cosmos DB account of the Dapr state store (globally unique).')
param cosmosAccountName string = 'cloudnative-cosmos'

@description('Storage account of the Dapr blob binding (globally unique, 3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param storageAccountName string = 'cloudnativedocs'

@description('Also create a SAS rule with Manage rights and store its connection string in Key Vault, for the chart\'s credentials.source=keyVault path. Off: the scaler uses its workload identity.')
param createScalerSasCredential bool = false

param tags object = {
  platform: 'cloudnative'
  environment: 'production'
}

module network 'modules/network.bicep' = {
  name: 'network'
  params: {
    location: location
    clusterName: clusterName
    firewallPrivateIp: firewallPrivateIp
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    clusterName: clusterName
    tags: tags
  }
}

// The cluster's control-plane identity, user-assigned so that it can hold
// Network Contributor on the BYO subnet and route table before AKS is created.
resource aksControlPlaneIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${clusterName}-control-plane'
  location: location
  tags: tags
}

module networkRoles 'modules/network-roles.bicep' = {
  name: 'network-roles'
  params: {
    vnetName: network.outputs.vnetName
    subnetName: network.outputs.nodeSubnetName
    routeTableName: network.outputs.routeTableName
    principalId: aksControlPlaneIdentity.properties.principalId
  }
}

module aks 'modules/aks.bicep' = {
  name: 'aks'
  dependsOn: [
    networkRoles
  ]
  params: {
    controlPlaneIdentityId: aksControlPlaneIdentity.id
    location: location
    clusterName: clusterName
    kubernetesVersion: kubernetesVersion
    adminGroupObjectIds: adminGroupObjectIds
    nodeSubnetId: network.outputs.nodeSubnetId
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    tags: tags
  }
}

module acr 'modules/acr.bicep' = {
  name: 'acr'
  params: {
    location: location
    acrName: acrName
    kubeletObjectId: aks.outputs.kubeletObjectId
    tags: tags
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    location: location
    namespaceName: serviceBusNamespaceName
    sku: serviceBusSku
    tags: tags
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    location: location
    keyVaultName: keyVaultName
    secretReaderPrincipalIds: [
      aks.outputs.keyVaultAddonObjectId
      identities.outputs.workloadIdentityPrincipalId
      identities.outputs.scalerIdentityPrincipalId
    ]
    tags: tags
  }
}

module identities 'modules/identity.bicep' = {
  name: 'identities'
  params: {
    location: location
    oidcIssuerUrl: aks.outputs.oidcIssuerUrl
    serviceBusNamespaceName: serviceBus.outputs.namespaceName
    scalerNamespace: scalerNamespace
    scalerServiceAccount: scalerServiceAccount
    appNamespace: appNamespace
    appServiceAccounts: appServiceAccounts
    tags: tags
  }
}

module data 'modules/data.bicep' = {
  name: 'data'
  params: {
    location: location
    cosmosAccountName: cosmosAccountName
    storageAccountName: storageAccountName
    tags: tags
  }
}

module keyVaultSecrets 'modules/keyvault-secrets.bicep' = {
  name: 'keyvault-secrets'
  params: {
    keyVaultName: keyVault.outputs.keyVaultName
    serviceBusDaprRuleId: serviceBus.outputs.daprRuleId
    cosmosAccountName: data.outputs.cosmosAccountName
    storageAccountName: data.outputs.storageAccountName
  }
}

module scalerSas 'modules/scaler-sas.bicep' = if (createScalerSasCredential) {
  name: 'scaler-sas'
  params: {
    serviceBusNamespaceName: serviceBus.outputs.namespaceName
    keyVaultName: keyVault.outputs.keyVaultName
  }
}

// Values for deploy/flux/clusters/production/cluster-settings.yaml.
output aksClusterName string = aks.outputs.clusterName
output oidcIssuerUrl string = aks.outputs.oidcIssuerUrl
output tenantId string = tenant().tenantId
output scalerIdentityClientId string = identities.outputs.scalerIdentityClientId
output workloadIdentityClientId string = identities.outputs.workloadIdentityClientId
output keyVaultAddonClientId string = aks.outputs.keyVaultAddonClientId
output keyVaultName string = keyVault.outputs.keyVaultName
output serviceBusNamespaceName string = serviceBus.outputs.namespaceName
output acrLoginServer string = acr.outputs.loginServer
output cosmosAccountEndpoint string = data.outputs.cosmosAccountEndpoint
output storageAccountName string = data.outputs.storageAccountName
