// Broken Bicep: an unclosed object and a stray token.
param location string = resourceGroup().location

resource sb 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: 'cloudnative-bus'
  location: location
  sku: {
    name: 'Standard'
  properties: {
    minimumTlsVersion: '1.2'
  }
}}
output ns string = sb.name )
