// Parses, but declares no queue, identity, federated credential or role for the scaler.
resource sb 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: 'cloudnative-bus'
  location: 'westeurope'
  sku: {
    name: 'Standard'
  }
}

resource aks 'Microsoft.ContainerService/managedClusters@2024-01-01' = {
  name: 'aks'
  location: 'westeurope'
  properties: {
    oidcIssuerProfile: { enabled: false }
  }
}
