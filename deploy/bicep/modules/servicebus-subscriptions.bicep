// Subscriptions of one topic, each with its dead-letter queue enabled
// ("every Service Bus subscription should have DLQ processing").
param namespaceName string
param topicName string
param subscriptionNames array

resource topic 'Microsoft.ServiceBus/namespaces/topics@2022-10-01-preview' existing = {
  name: '${namespaceName}/${topicName}'
}

resource subscriptions 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2022-10-01-preview' = [for name in subscriptionNames: {
  parent: topic
  name: name
  properties: {
    // 2 minutes against Dapr's lockRenewalInSec of 20 (order-pubsub).
    lockDuration: 'PT2M'
    maxDeliveryCount: 10
    deadLetteringOnMessageExpiration: true
    deadLetteringOnFilterEvaluationExceptions: true
    defaultMessageTimeToLive: 'P14D'
    enableBatchedOperations: true
  }
}]
