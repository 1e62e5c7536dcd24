//! The checked-in CRD is the generated one (no lab needed).

use kube::CustomResourceExt;
use rbd_mirror_step::api::RbdMirrorStep;

#[test]
fn checked_in_crd_matches_the_generated_one() {
    let generated = serde_saphyr::to_string(&RbdMirrorStep::crd()).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/crd/rbdmirrorstep.yaml");
    let checked_in = std::fs::read_to_string(path).unwrap();
    assert!(
        generated == checked_in,
        "config/crd/rbdmirrorstep.yaml is stale: regenerate it with `cargo run -- crd > config/crd/rbdmirrorstep.yaml`"
    );
}
