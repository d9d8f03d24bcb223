// The Key Vault secrets the Dapr components read through the azure-keyvault
// secret store (deploy/flux/infrastructure/configs/dapr-components.yaml): each
// secretKeyRef name there is a secret here. Written from the resources' keys
// at deployment time, so no secret is typed by hand or kept in Git; rotate a
// key, then re-run the deployment to update the secret.
param keyVaultName string
param serviceBusDaprRuleId string
param cosmosAccountName string
param storageAccountName string

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource cosmos 'Microsoft.DocumentDB/databaseAccounts@2024-05-15' existing = {
  name: cosmosAccountName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource servicebusConnection 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: 'servicebus-connection-string'
  properties: {
    value: listKeys(serviceBusDaprRuleId, '2022-10-01-preview').primaryConnectionString
    contentType: 'Service Bus connection string (Listen, Send) for the Dapr pub/sub component'
  }
}

resource cosmosMasterKey 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: 'cosmos-master-key'
  properties: {
    value: cosmos.listKeys().primaryMasterKey
    contentType: 'Cosmos DB primary key for the Dapr state store'
  }
}

resource storageAccountKey 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: 'storage-account-key'
  properties: {
    value: storage.listKeys().keys[0].value
    contentType: 'Storage account key for the Dapr blob binding'
  }
}
