//! `allImages`: every mirror-enabled image of the step's pool (or
//! namespace), listed once. A name this controller cannot act on, or more
//! images than one step may hold, fails the step naming them: silently
//! dropping one would report a partial failover as a success.

use super::failures::ceph_failure;
use super::outcome::{Failure, Reason};
use super::resolve::{MAX_IMAGES, ResolvedStep};
use crate::ceph::{Ceph, ImageSpec};

/// The step's images as `pool/image`, read from `local`.
pub async fn mirror_images<C: Ceph>(
    step: &ResolvedStep,
    local: &C,
    site: &str,
) -> Result<Vec<String>, Failure> {
    let (pool, ns) = (&step.pool, step.rados_namespace.as_deref());
    let names = local
        .mirror_images(pool, ns)
        .await
        .map_err(|e| ceph_failure(&e, site))?;
    select_all(&names, pool, ns, site)
}

/// The pure half of `mirror_images`.
pub fn select_all(
    names: &[String],
    pool: &str,
    ns: Option<&str>,
    site: &str,
) -> Result<Vec<String>, Failure> {
    let mut good = vec![];
    let mut bad = vec![];
    for n in names {
        match ImageSpec::parse(n, pool, ns) {
            Ok(s) => good.push(s.to_string()),
            Err(_) => bad.push(n.escape_debug().to_string()),
        }
    }
    if !bad.is_empty() {
        return Err(Failure::new(
            Reason::InvalidParams,
            format!(
                "allImages: {} mirrored image name(s) in {pool} on {site} are not names this controller acts on: {}; \
                 name the images to act on with images instead",
                bad.len(),
                bad.join(", ")
            ),
        ));
    }
    if good.len() > MAX_IMAGES {
        return Err(Failure::new(
            Reason::InvalidParams,
            format!(
                "allImages: {pool} on {site} has {} mirrored images; one step acts on at most {MAX_IMAGES}: \
                 split them over several steps with images",
                good.len(),
            ),
        ));
    }
    Ok(good)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_images_fails_naming_every_name_it_cannot_act_on() {
        let names = vec![
            "csi-vol-1".to_string(),
            "-n".to_string(),
            "bad name".to_string(),
        ];
        let f = select_all(&names, "rp", None, "site-a").unwrap_err();
        assert_eq!(f.reason, Reason::InvalidParams);
        assert!(
            f.message.contains("2 mirrored image name(s)"),
            "{}",
            f.message
        );
        assert!(f.message.contains("-n") && f.message.contains("bad name"));
        let ok = select_all(&names[..1], "rp", None, "site-a").unwrap();
        assert_eq!(ok, vec!["rp/csi-vol-1".to_string()]);
    }

    #[test]
    fn all_images_is_capped_like_images() {
        let names: Vec<String> = (0..=MAX_IMAGES).map(|i| format!("img-{i}")).collect();
        let f = select_all(&names, "rp", None, "site-a").unwrap_err();
        assert!(f.message.contains("at most"), "{}", f.message);
    }
}
