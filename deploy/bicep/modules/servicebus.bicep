// The seed's messaging: the order-processing queue (Phase 3/4) and the orders
// and payments topics (Phase 2), all with dead-lettering from day one.
param location string
param namespaceName string
@allowed([
  'Standard'
  'Premium'
])
param sku string
param tags object

@description('Dapr app IDs that subscribe to each topic (Dapr names the subscription after the app ID).')
param topicSubscriptions object = {
  orders: [
    'order-processor'
  ]
  payments: [
    'order-service'
  ]
}

resource serviceBusNamespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: namespaceName
  location: location
  tags: tags
  sku: {
    name: sku
    tier: sku
    capacity: sku == 'Premium' ? 1 : null
  }
  properties: {
    minimumTlsVersion: '1.2'
    zoneRedundant: sku == 'Premium'
    // The seed's Dapr pub/sub still authenticates with a connection string.
    disableLocalAuth: false
    publicNetworkAccess: 'Enabled'
  }
}

// The queue order-processor drains and blend-scaler watches.
resource orderProcessingQueue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: serviceBusNamespace
  name: 'order-processing'
  properties: {
    // Two minutes, renewed every 20 s (Dapr lockRenewalInSec, the SDK
    // processors' auto-renewal): five renewals can fail before the lock
    // expires and the message is redelivered.
    lockDuration: 'PT2M'
    maxDeliveryCount: 10
    deadLetteringOnMessageExpiration: true
    defaultMessageTimeToLive: 'P14D'
    // Off on purpose: the dead-letter processor (apps/base/dlq-processor, the
    // seed's ServiceBusDeadLetterProcessor) re-sends a retryable message with
    // its original MessageId, then completes the dead-lettered copy. With
    // duplicate detection on, a re-send inside the history window (a message
    // that fails fast exhausts maxDeliveryCount in seconds) is silently
    // discarded as a duplicate, and the order is lost. Consumers are
    // idempotent on the order ID instead (docs/deploy.md, "Dead-letter
    // pattern"). This cannot be changed on an existing queue: recreate it.
    requiresDuplicateDetection: false
    enableBatchedOperations: true
    maxSizeInMegabytes: 5120
  }
}

// Dapr's pub/sub component still authenticates with a connection string (the
// seed's servicebus secret): a rule with Listen and Send only, no Manage, since
// the component runs with disableEntityManagement.
resource daprRule 'Microsoft.ServiceBus/namespaces/AuthorizationRules@2022-10-01-preview' = {
  parent: serviceBusNamespace
  name: 'dapr-pubsub'
  properties: {
    rights: [
      'Listen'
      'Send'
    ]
  }
}

resource topics 'Microsoft.ServiceBus/namespaces/topics@2022-10-01-preview' = [for topicName in objectKeys(topicSubscriptions): {
  parent: serviceBusNamespace
  name: topicName
  properties: {
    defaultMessageTimeToLive: 'P14D'
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    enableBatchedOperations: true
    supportOrdering: false
    maxSizeInMegabytes: 5120
  }
}]

module subscriptions 'servicebus-subscriptions.bicep' = [for (topicName, i) in objectKeys(topicSubscriptions): {
  name: 'sb-subscriptions-${topicName}'
  params: {
    namespaceName: serviceBusNamespace.name
    topicName: topics[i].name
    subscriptionNames: topicSubscriptions[topicName]
  }
}]

output namespaceName string = serviceBusNamespace.name
output namespaceId string = serviceBusNamespace.id
output queueName string = orderProcessingQueue.name
output daprRuleId string = daprRule.id
