// The seed's Dapr state store (Cosmos DB, component order-state) and blob
// binding (Storage, component document-storage), which the seed referenced but
// never created.
param location string
param cosmosAccountName string
param storageAccountName string
param tags object

resource cosmos 'Microsoft.DocumentDB/databaseAccounts@2024-05-15' = {
  name: cosmosAccountName
  location: location
  tags: tags
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    consistencyPolicy: {
      defaultConsistencyLevel: 'Session'
    }
    locations: [
      {
        locationName: location
        failoverPriority: 0
        isZoneRedundant: true
      }
    ]
    minimalTlsVersion: 'Tls12'
    // The Dapr component reads the master key from Key Vault (the seed's
    // cosmos secret), so key auth stays on.
    disableLocalAuth: false
    publicNetworkAccess: 'Enabled'
  }
}

resource ordersDb 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-05-15' = {
  parent: cosmos
  name: 'orders'
  properties: {
    resource: {
      id: 'orders'
    }
  }
}

// Dapr's Cosmos DB state store requires the partition key path /partitionKey.
resource stateContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: ordersDb
  name: 'state'
  properties: {
    resource: {
      id: 'state'
      partitionKey: {
        paths: [
          '/partitionKey'
        ]
        kind: 'Hash'
      }
    }
    options: {
      autoscaleSettings: {
        maxThroughput: 4000
      }
    }
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_ZRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    supportsHttpsTrafficOnly: true
    // The blob binding uses the account key from Key Vault (the seed's storage secret).
    allowSharedKeyAccess: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource documents 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'documents'
  properties: {
    publicAccess: 'None'
  }
}

output cosmosAccountName string = cosmos.name
output cosmosAccountEndpoint string = cosmos.properties.documentEndpoint
output storageAccountName string = storage.name
