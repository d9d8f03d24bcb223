// The seed's Phase 1 cluster: three pools across zones, Azure CNI with Calico
// network policy, Entra ID RBAC, OIDC issuer and workload identity, Key Vault
// CSI driver with rotation, Container Insights, Azure Policy, Defender.
param location string
param clusterName string
param kubernetesVersion string
param adminGroupObjectIds array
param nodeSubnetId string
param logAnalyticsWorkspaceId string
@description('User-assigned control-plane identity, granted Network Contributor on the subnet and route table before the cluster exists (network-roles.bicep).')
param controlPlaneIdentityId string
param tags object

resource aksCluster 'Microsoft.ContainerService/managedClusters@2024-01-01' = {
  name: clusterName
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${controlPlaneIdentityId}': {}
    }
  }
  properties: {
    kubernetesVersion: kubernetesVersion
    dnsPrefix: '${clusterName}-dns'
    enableRBAC: true
    disableLocalAccounts: true
    aadProfile: {
      managed: true
      enableAzureRBAC: true
      adminGroupObjectIDs: adminGroupObjectIds
    }
    networkProfile: {
      networkPlugin: 'azure'
      networkPolicy: 'calico'
      serviceCidr: '10.0.0.0/16'
      dnsServiceIP: '10.0.0.10'
      loadBalancerSku: 'standard'
      outboundType: 'userDefinedRouting'
    }
    agentPoolProfiles: [
      {
        name: 'system'
        count: 3
        vmSize: 'Standard_D4s_v5'
        osType: 'Linux'
        mode: 'System'
        vnetSubnetID: nodeSubnetId
        availabilityZones: [
          '1'
          '2'
          '3'
        ]
        enableAutoScaling: true
        minCount: 3
        maxCount: 5
        nodeTaints: [
          'CriticalAddonsOnly=true:NoSchedule'
        ]
      }
      {
        // blend-scaler runs here (nodeSelector workload=application).
        name: 'apppool'
        count: 3
        vmSize: 'Standard_D8s_v5'
        osType: 'Linux'
        mode: 'User'
        vnetSubnetID: nodeSubnetId
        availabilityZones: [
          '1'
          '2'
          '3'
        ]
        enableAutoScaling: true
        minCount: 3
        maxCount: 20
        nodeLabels: {
          workload: 'application'
        }
      }
      {
        // The seed's Standard_NC6s_v3 (V100) is retired; NC4as_T4_v3 is the
        // smallest current GPU size with the same role.
        name: 'gpupool'
        count: 0
        vmSize: 'Standard_NC4as_T4_v3'
        osType: 'Linux'
        mode: 'User'
        vnetSubnetID: nodeSubnetId
        enableAutoScaling: true
        minCount: 0
        maxCount: 4
        nodeLabels: {
          workload: 'gpu'
        }
        nodeTaints: [
          'nvidia.com/gpu=true:NoSchedule'
        ]
      }
    ]
    autoUpgradeProfile: {
      upgradeChannel: 'stable'
      nodeOSUpgradeChannel: 'NodeImage'
    }
    oidcIssuerProfile: {
      enabled: true
    }
    securityProfile: {
      workloadIdentity: {
        enabled: true
      }
      defender: {
        logAnalyticsWorkspaceResourceId: logAnalyticsWorkspaceId
        securityMonitoring: {
          enabled: true
        }
      }
      imageCleaner: {
        enabled: true
        intervalHours: 48
      }
    }
    addonProfiles: {
      omsagent: {
        enabled: true
        config: {
          logAnalyticsWorkspaceResourceID: logAnalyticsWorkspaceId
        }
      }
      azurepolicy: {
        enabled: true
      }
      azureKeyvaultSecretsProvider: {
        enabled: true
        config: {
          enableSecretRotation: 'true'
          rotationPollInterval: '2m'
        }
      }
    }
  }
}

output clusterName string = aksCluster.name
output oidcIssuerUrl string = aksCluster.properties.oidcIssuerProfile.issuerURL
output kubeletObjectId string = aksCluster.properties.identityProfile.kubeletidentity.objectId
output keyVaultAddonObjectId string = aksCluster.properties.addonProfiles.azureKeyvaultSecretsProvider.identity.objectId
output keyVaultAddonClientId string = aksCluster.properties.addonProfiles.azureKeyvaultSecretsProvider.identity.clientId
