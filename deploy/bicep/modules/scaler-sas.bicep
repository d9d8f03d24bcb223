// Optional SAS path (main.bicep createScalerSasCredential): a dedicated rule
// whose connection string lands in Key Vault as servicebus-scaler-connection,
// for the chart's credentials.source=keyVault. Service Bus only grants Manage
// together with Listen and Send, so this is as broad as Data Owner; prefer the
// workload identity.
param serviceBusNamespaceName string
param keyVaultName string

resource serviceBusNamespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: serviceBusNamespaceName
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource scalerRule 'Microsoft.ServiceBus/namespaces/AuthorizationRules@2022-10-01-preview' = {
  parent: serviceBusNamespace
  name: 'blend-scaler-monitor'
  properties: {
    rights: [
      'Manage'
      'Listen'
      'Send'
    ]
  }
}

resource scalerConnection 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: 'servicebus-scaler-connection'
  properties: {
    value: scalerRule.listKeys().primaryConnectionString
    contentType: 'Service Bus connection string (Manage) for blend-scaler'
  }
}
