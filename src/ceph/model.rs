//! Typed views of `rbd ... --format json` output. Every field that some
//! release lacks is optional, and key names that changed between releases
//! are accepted under each name (Octopus and older said `master_position`,
//! Pacific on `primary_position`), so one parser serves every release.
//! `captured.rs` checks it against what Pacific, Reef and Tentacle printed
//! on the lab (tests/fixtures/ceph); the older names come from Ceph's
//! source, never from a capture.

use serde::Deserialize;
use serde_json::Value;

/// `rbd info <spec> --format json`
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ImageInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub mirroring: Option<MirrorInfo>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct MirrorInfo {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub global_id: Option<String>,
    #[serde(default)]
    pub primary: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorMode {
    Journal,
    Snapshot,
}

impl ImageInfo {
    pub fn mirroring_enabled(&self) -> bool {
        self.mirroring
            .as_ref()
            .is_some_and(|m| m.state == "enabled")
    }

    /// The role, from `rbd info` (which changes at once, unlike the lazy
    /// mirror status: ../shared/ceph-lab.md P9).
    pub fn is_primary(&self) -> Option<bool> {
        self.mirroring.as_ref().and_then(|m| m.primary)
    }

    pub fn mode(&self) -> Option<MirrorMode> {
        match self.mirroring.as_ref()?.mode.as_deref() {
            Some("journal") => Some(MirrorMode::Journal),
            Some("snapshot") => Some(MirrorMode::Snapshot),
            // Pacific and older omit the mode for journal images; the
            // journaling feature tells them apart.
            None if self.features.iter().any(|f| f == "journaling") => Some(MirrorMode::Journal),
            None => Some(MirrorMode::Snapshot),
            Some(_) => None,
        }
    }
}

/// `rbd mirror image status <spec> --format json`
#[derive(Clone, Debug, Default, Deserialize)]
pub struct MirrorImageStatus {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub global_id: String,
    /// `up+replaying`, `down+unknown`, ... of the local rbd-mirror daemon.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub last_update: String,
    #[serde(default, alias = "remote_statuses")]
    pub peer_sites: Vec<PeerSiteStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PeerSiteStatus {
    #[serde(default)]
    pub site_name: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub last_update: String,
}

impl MirrorImageStatus {
    pub fn is_split_brain(&self) -> bool {
        // journal: "split-brain detected"; snapshot replayer: "split-brain".
        self.state.ends_with("+error") && self.description.contains("split-brain")
    }

    /// The JSON that follows "replaying, " in the description.
    pub fn replay(&self) -> Option<ReplayStatus> {
        parse_replay(&self.description)
    }
}

pub fn parse_replay(description: &str) -> Option<ReplayStatus> {
    let start = description.find('{')?;
    serde_json::from_str(&description[start..]).ok()
}

/// Replay progress inside a `replaying, {...}` description.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ReplayStatus {
    // snapshot mode
    #[serde(default)]
    pub replay_state: Option<String>,
    #[serde(default)]
    pub local_snapshot_timestamp: Option<i64>,
    #[serde(default)]
    pub remote_snapshot_timestamp: Option<i64>,
    // journal mode
    #[serde(default, alias = "entries_behind_master")]
    pub entries_behind_primary: Option<i64>,
    #[serde(default, alias = "master_position")]
    pub primary_position: Option<Value>,
    #[serde(default, alias = "mirror_position")]
    pub non_primary_position: Option<Value>,
}

/// One entry of `rbd snap ls --all --format json`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SnapEntry {
    #[serde(default)]
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub namespace: Option<SnapNamespace>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SnapNamespace {
    #[serde(default, rename = "type")]
    pub type_: String,
    /// `primary`, `non-primary`, `demoted` (a demoted primary or a copied demotion).
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub complete: Option<bool>,
    #[serde(default)]
    pub primary_snap_id: Option<u64>,
}

impl SnapEntry {
    pub fn is_mirror(&self) -> bool {
        self.namespace.as_ref().is_some_and(|n| n.type_ == "mirror")
    }
}

/// Proof, in snapshot mode, that the peer's demotion arrived here: the newest
/// local mirror snapshot is a complete non-primary copy of a demotion snapshot
/// (ceph/ceph GetInfoRequest decides promotability the same way).
pub fn snapshot_demotion_arrived(snaps: &[SnapEntry]) -> bool {
    let newest = snaps.iter().filter(|s| s.is_mirror()).max_by_key(|s| s.id);
    newest.is_some_and(|s| {
        let ns = s
            .namespace
            .as_ref()
            .expect("mirror snapshot has a namespace");
        s.name.starts_with(".mirror.non_primary.")
            && ns.state.as_deref().is_some_and(|st| st.contains("demoted"))
            && ns.complete == Some(true)
    })
}

/// One entry of `rbd lock ls <spec> --format json`. A client writing to the
/// image holds its exclusive lock (`id: "auto <cookie>"`); rbd-mirror does not
/// (its watch on the primary is not a lock), so a locker means "in use".
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Locker {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub locker: String,
    #[serde(default)]
    pub address: String,
}

/// `rbd mirror pool status <pool> --verbose --format json` (only the image names are used).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PoolStatus {
    #[serde(default)]
    pub images: Vec<PoolImage>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PoolImage {
    #[serde(default)]
    pub name: String,
}

/// `rbd journal status --format json`
#[derive(Clone, Debug, Default, Deserialize)]
pub struct JournalStatus {
    #[serde(default)]
    pub registered_clients: Vec<JournalClient>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct JournalClient {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub commit_position: Value,
    #[serde(default)]
    pub state: Option<String>,
}

impl JournalStatus {
    /// True when every mirror peer client committed up to the master client
    /// (`id == ""`): the peer replayed everything (upstream QA's
    /// `wait_for_journal_replay_complete`; ../shared/ceph-lab.md P9).
    pub fn peers_caught_up(&self) -> bool {
        let Some(master) = self
            .registered_clients
            .iter()
            .find(|c| c.id.is_empty())
            .and_then(|c| first_position(&c.commit_position))
        else {
            // No committed entry: nothing proves what the peer replayed (an
            // empty position on both sides is not "caught up").
            return false;
        };
        let peers: Vec<_> = self
            .registered_clients
            .iter()
            .filter(|c| !c.id.is_empty())
            .collect();
        !peers.is_empty()
            && peers
                .iter()
                .all(|p| first_position(&p.commit_position) == Some(master))
    }
}

impl JournalStatus {
    /// Whether the image's own (master) client has committed any entry.
    /// A demotion taken while it has none records a demotion tag with no
    /// valid predecessor, which the old primary's rbd-mirror later cannot
    /// chain to the new primary's promotion: "split-brain detected"
    /// (ceph/ceph librbd/journal/DemoteRequest.cc `allocate_tag`, and
    /// rbd_mirror/image_replayer/journal/PrepareReplayRequest.cc).
    pub fn master_committed(&self) -> bool {
        self.registered_clients
            .iter()
            .find(|c| c.id.is_empty())
            .and_then(|c| first_position(&c.commit_position))
            .is_some()
    }
}

fn first_position(v: &Value) -> Option<(i64, i64)> {
    let p = v.get("object_positions")?.as_array()?.first()?;
    Some((p.get("tag_tid")?.as_i64()?, p.get("entry_tid")?.as_i64()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from the lab (Ceph 16.2.15) and ../shared/ceph-lab.md.
    const INFO_NON_PRIMARY: &str = r#"{"name":"t1","id":"102e1d5d33fc","size":67108864,"objects":16,"order":22,"object_size":4194304,"snapshot_count":1,"block_name_prefix":"rbd_data.102e1d5d33fc","format":2,"features":["layering","exclusive-lock","object-map","fast-diff","deep-flatten","non-primary"],"op_features":[],"flags":[],"create_timestamp":"Fri Nov 27 12:16:24 2026","mirroring":{"mode":"snapshot","state":"enabled","global_id":"e841e362-b6e1-4b93-acc3-201dfa822dd5","primary":false}}"#;
    const STATUS_REPLAYING_SNAPSHOT: &str = r#"{"name":"t1","global_id":"e841e362","state":"up+replaying","description":"replaying, {\"bytes_per_second\":0.0,\"bytes_per_snapshot\":0.0,\"last_snapshot_bytes\":0,\"last_snapshot_sync_seconds\":0,\"local_snapshot_timestamp\":1795781940,\"remote_snapshot_timestamp\":1795781940,\"replay_state\":\"idle\"}","last_update":"2026-11-27 12:19:15","peer_sites":[{"site_name":"site-a","mirror_uuids":"f41bb7c6","state":"up+stopped","description":"local image is primary","last_update":"2026-11-27 12:19:14"}]}"#;
    const STATUS_REPLAYING_JOURNAL: &str = r#"{"name":"jimg","global_id":"8499f2ed","state":"up+replaying","description":"replaying, {\"bytes_per_second\":35.0,\"entries_behind_primary\":0,\"entries_per_second\":0.4,\"non_primary_position\":{\"entry_tid\":3,\"object_number\":3,\"tag_tid\":1},\"primary_position\":{\"entry_tid\":3,\"object_number\":3,\"tag_tid\":1}}","last_update":"2026-11-27 11:33:01","peer_sites":[]}"#;
    // Nautilus/Octopus key names: written from Ceph's source (src/tools/rbd_mirror
    // of those releases), not captured; the lab runs no release older than Pacific.
    const STATUS_REPLAYING_JOURNAL_OLD: &str = r#"{"name":"jimg","global_id":"x","state":"up+replaying","description":"replaying, master_position=[object_number=3, tag_tid=1, entry_tid=3], mirror_position=[object_number=3, tag_tid=1, entry_tid=3], entries_behind_master=0","last_update":"","remote_statuses":[]}"#;
    const STATUS_OLD_JSON: &str = r#"{"name":"jimg","global_id":"x","state":"up+replaying","description":"replaying, {\"entries_behind_master\":2,\"master_position\":{\"entry_tid\":5},\"mirror_position\":{\"entry_tid\":3}}"}"#;
    const SNAPS_DEMOTED: &str = r#"[{"id":9,"name":".mirror.non_primary.e841e362.c2f7980f","size":67108864,"protected":"false","timestamp":"Fri Nov 27 12:19:25 2026","namespace":{"type":"mirror","state":"demoted","mirror_peer_uuids":["0d809ec8"],"complete":true,"primary_mirror_uuid":"f41bb7c6","primary_snap_id":8,"last_copied_object_number":16}}]"#;
    const SNAPS_PRIMARY_DEMOTED: &str = r#"[{"id":6,"name":".mirror.primary.e841e362.fd62fb54","size":67108864,"protected":"false","timestamp":"Fri Nov 27 12:19:00 2026","namespace":{"type":"mirror","state":"primary","mirror_peer_uuids":[],"complete":true}},{"id":8,"name":".mirror.primary.e841e362.f2d570e1","size":67108864,"protected":"false","timestamp":"Fri Nov 27 12:19:24 2026","namespace":{"type":"mirror","state":"demoted","mirror_peer_uuids":["b7806735"],"complete":true}}]"#;
    const SNAPS_REPLAYING: &str = r#"[{"id":7,"name":".mirror.non_primary.e841e362.5324cffd","size":67108864,"protected":"false","timestamp":"Fri Nov 27 12:19:01 2026","namespace":{"type":"mirror","state":"non-primary","mirror_peer_uuids":[],"complete":true,"primary_mirror_uuid":"f41bb7c6","primary_snap_id":6,"last_copied_object_number":16}}]"#;

    #[test]
    fn info_gives_role_and_mode() {
        let i: ImageInfo = serde_json::from_str(INFO_NON_PRIMARY).unwrap();
        assert_eq!(i.is_primary(), Some(false));
        assert_eq!(i.mode(), Some(MirrorMode::Snapshot));
        assert!(i.mirroring_enabled());
        let plain: ImageInfo =
            serde_json::from_str(r#"{"name":"x","id":"1","features":[]}"#).unwrap();
        assert!(!plain.mirroring_enabled());
        let disabled: ImageInfo =
            serde_json::from_str(r#"{"name":"x","mirroring":{"state":"disabled"}}"#).unwrap();
        assert!(!disabled.mirroring_enabled());
    }

    #[test]
    fn replay_progress_parses_in_both_modes_and_key_generations() {
        let s: MirrorImageStatus = serde_json::from_str(STATUS_REPLAYING_SNAPSHOT).unwrap();
        assert_eq!(s.state, "up+replaying");
        let r = s.replay().unwrap();
        assert_eq!(r.replay_state.as_deref(), Some("idle"));
        assert_eq!(r.local_snapshot_timestamp, Some(1795781940));
        assert_eq!(s.peer_sites[0].site_name, "site-a");

        let j: MirrorImageStatus = serde_json::from_str(STATUS_REPLAYING_JOURNAL).unwrap();
        assert_eq!(j.replay().unwrap().entries_behind_primary, Some(0));
        let old: MirrorImageStatus = serde_json::from_str(STATUS_OLD_JSON).unwrap();
        let r = old.replay().unwrap();
        assert_eq!(r.entries_behind_primary, Some(2));
        assert!(r.primary_position.is_some() && r.non_primary_position.is_some());
        // Nautilus's plain-text positions are not JSON: no replay detail, no panic.
        let older: MirrorImageStatus = serde_json::from_str(STATUS_REPLAYING_JOURNAL_OLD).unwrap();
        assert!(older.replay().is_none());
        assert_eq!(older.state, "up+replaying");
    }

    #[test]
    fn split_brain_is_recognised_in_both_modes() {
        for d in ["split-brain detected", "split-brain"] {
            let s = MirrorImageStatus {
                state: "up+error".into(),
                description: d.into(),
                ..Default::default()
            };
            assert!(s.is_split_brain());
        }
        let s = MirrorImageStatus {
            state: "up+error".into(),
            description: "error bootstrapping replay".into(),
            ..Default::default()
        };
        assert!(!s.is_split_brain());
    }

    #[test]
    fn demotion_arrival_needs_a_complete_copied_demotion_snapshot() {
        let copied: Vec<SnapEntry> = serde_json::from_str(SNAPS_DEMOTED).unwrap();
        assert!(snapshot_demotion_arrived(&copied));
        // The site's own demotion snapshot (a demoted *primary*) is no proof: a
        // stale promote from it would lose the peer's writes.
        let own: Vec<SnapEntry> = serde_json::from_str(SNAPS_PRIMARY_DEMOTED).unwrap();
        assert!(!snapshot_demotion_arrived(&own));
        let replaying: Vec<SnapEntry> = serde_json::from_str(SNAPS_REPLAYING).unwrap();
        assert!(!snapshot_demotion_arrived(&replaying));
        let mut incomplete: Vec<SnapEntry> = serde_json::from_str(SNAPS_DEMOTED).unwrap();
        incomplete[0].namespace.as_mut().unwrap().complete = Some(false);
        assert!(!snapshot_demotion_arrived(&incomplete));
        assert!(!snapshot_demotion_arrived(&[]));
    }

    #[test]
    fn journal_catch_up_compares_peer_and_master_commit_positions() {
        let caught: JournalStatus = serde_json::from_str(r#"{"minimum_set":0,"active_set":0,"registered_clients":[{"id":"","data":"","commit_position":{"object_positions":[{"object_number":3,"tag_tid":4,"entry_tid":7}]},"state":"connected"},{"id":"2dcaf136","commit_position":{"object_positions":[{"object_number":3,"tag_tid":4,"entry_tid":7}]},"state":"connected"}]}"#).unwrap();
        assert!(caught.peers_caught_up());
        let behind: JournalStatus = serde_json::from_str(r#"{"registered_clients":[{"id":"","commit_position":{"object_positions":[{"object_number":3,"tag_tid":4,"entry_tid":9}]}},{"id":"p","commit_position":{"object_positions":[{"object_number":3,"tag_tid":4,"entry_tid":7}]}}]}"#).unwrap();
        assert!(!behind.peers_caught_up());
        assert!(behind.master_committed());
    }

    #[test]
    fn an_unwritten_journal_is_neither_caught_up_nor_committed() {
        // Both clients at the empty position: what an image never written
        // since mirroring started shows. Equal, but it proves nothing.
        let idle: JournalStatus = serde_json::from_str(r#"{"minimum_set":0,"active_set":0,"registered_clients":[{"id":"","data":"","commit_position":{"object_positions":[]},"state":"connected"},{"id":"2dcaf136","commit_position":{"object_positions":[]},"state":"connected"}]}"#).unwrap();
        assert!(!idle.peers_caught_up());
        assert!(!idle.master_committed());
    }
}
