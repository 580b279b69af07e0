# The Kubernetes CSI hostpath driver as Nomad's CSI plugin "hostpath" (the stack default,
# storage.plugin_id). A system job: one monolith (controller + node) on every client.
#
# Lab only: a hostpath volume lives on the disk of the node whose plugin created it, and the
# driver reports that node as the volume's topology, so Nomad places the claiming allocation
# there. When that VM is down its member cannot move; Patroni fails over to the others.
job "csi-hostpath" {
  datacenters = ["dc1"]
  node_pool   = "default"
  type        = "system"

  group "plugin" {
    task "plugin" {
      driver = "docker"

      config {
        # Kept equal to HOSTPATH_CSI_IMAGE in vagrant/scripts/versions.env.
        image      = "registry.k8s.io/sig-storage/hostpathplugin:v1.9.0"
        privileged = true
        args = [
          "--drivername=hostpath.csi.k8s.io",
          "--endpoint=unix:///csi/csi.sock",
          "--nodeid=${node.unique.name}",
          "--v=2",
        ]
        # The driver's state and the volumes' data survive a restart of the plugin.
        volumes = ["/var/lib/csi-hostpath:/csi-data-dir"]
      }

      csi_plugin {
        id        = "hostpath"
        type      = "monolith"
        mount_dir = "/csi"
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
