// Network Contributor for the cluster's control-plane identity on the BYO node
// subnet and the route table: with outboundType userDefinedRouting, AKS writes
// to both (load balancer frontends, node routes). `az aks create` adds this
// itself; an ARM/Bicep deployment does not, so it is declared here, before the
// cluster is created (hence a user-assigned control-plane identity).
param vnetName string
param subnetName string
param routeTableName string
param principalId string

var networkContributor = '4d97b98b-1d4f-4787-a291-c67834d212e7'

resource vnet 'Microsoft.Network/virtualNetworks@2023-09-01' existing = {
  name: vnetName
}

resource subnet 'Microsoft.Network/virtualNetworks/subnets@2023-09-01' existing = {
  parent: vnet
  name: subnetName
}

resource routeTable 'Microsoft.Network/routeTables@2023-09-01' existing = {
  name: routeTableName
}

resource subnetRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subnet.id, principalId, networkContributor)
  scope: subnet
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', networkContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource routeTableRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(routeTable.id, principalId, networkContributor)
  scope: routeTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', networkContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
