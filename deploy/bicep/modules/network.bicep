// The seed's cluster routes egress through a firewall (outboundType
// userDefinedRouting), which needs a subnet with a route table; the seed left
// both out.
param location string
param clusterName string
param firewallPrivateIp string
param tags object

resource routeTable 'Microsoft.Network/routeTables@2023-09-01' = {
  name: 'rt-${clusterName}'
  location: location
  tags: tags
  properties: {
    disableBgpRoutePropagation: true
    routes: [
      {
        name: 'default-via-firewall'
        properties: {
          addressPrefix: '0.0.0.0/0'
          nextHopType: 'VirtualAppliance'
          nextHopIpAddress: firewallPrivateIp
        }
      }
    ]
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2023-09-01' = {
  name: 'vnet-${clusterName}'
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        '10.240.0.0/16'
      ]
    }
    subnets: [
      {
        // Azure CNI gives pods addresses from this subnet: size it for
        // (max nodes x max pods per node).
        name: 'snet-nodes'
        properties: {
          addressPrefix: '10.240.0.0/17'
          routeTable: {
            id: routeTable.id
          }
        }
      }
    ]
  }
}

output nodeSubnetId string = vnet.properties.subnets[0].id
output vnetName string = vnet.name
output nodeSubnetName string = vnet.properties.subnets[0].name
output routeTableName string = routeTable.name
