//! One CSI volume per member, created before the postgres job claims them.

use crate::nomad::job::*;
use crate::stack::{Stack, Storage};

pub fn member_volume_id(cluster: &str, index: u32) -> String {
    format!("{cluster}-member-{index}")
}

pub fn volumes(stack: &Stack) -> Vec<CsiVolume> {
    let Storage::Csi(csi) = &stack.storage else {
        return Vec::new();
    };
    let cluster = &stack.cluster.name.value;
    (0..stack.postgres.members.value)
        .map(|index| {
            let id = member_volume_id(cluster, index);
            CsiVolume {
                id: Some(id.clone()),
                name: Some(id),
                namespace: Some(stack.cluster.namespace.clone()),
                plugin_id: Some(csi.plugin_id.clone()),
                requested_capacity_min: Some(csi.capacity_min.value as i64),
                requested_capacity_max: Some(csi.capacity_max.value as i64),
                requested_capabilities: Some(vec![CsiVolumeCapability {
                    access_mode: Some(csi.access_mode.clone()),
                    attachment_mode: Some(csi.attachment_mode.clone()),
                }]),
                mount_options: Some(CsiMountOptions { fs_type: Some(csi.fs_type.clone()), mount_flags: Some(csi.mount_flags.clone()) }),
                parameters: None,
            }
        })
        .collect()
}
