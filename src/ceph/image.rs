//! Validated image references (`pool[/namespace]/image`). Names reach `rbd`
//! only as separate argument-vector entries, and only after passing here, so
//! a name can neither be read as an option nor escape its pool.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageSpec {
    pub pool: String,
    pub namespace: Option<String>,
    pub image: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NameError {
    #[error("{what} name {name:?} is empty")]
    Empty { what: &'static str, name: String },
    #[error("{what} name {name:?} is longer than {max} characters")]
    TooLong {
        what: &'static str,
        name: String,
        max: usize,
    },
    #[error(
        "{what} name {name:?} may only contain letters, digits, '_', '.', '+' and '-', and may not start with '-' or '.'"
    )]
    BadChars { what: &'static str, name: String },
    #[error("image {0:?} is not `image`, `pool/image` or `pool/namespace/image`")]
    BadShape(String),
}

fn check(what: &'static str, name: &str, max: usize, extra: &[char]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty {
            what,
            name: name.into(),
        });
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            what,
            name: name.into(),
            max,
        });
    }
    let ok_char = |c: char| {
        c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' || extra.contains(&c)
    };
    if !name.chars().all(ok_char) || name.starts_with('-') || name.starts_with('.') {
        return Err(NameError::BadChars {
            what,
            name: name.into(),
        });
    }
    Ok(())
}

pub fn check_pool(name: &str) -> Result<(), NameError> {
    check("pool", name, 127, &[])
}

pub fn check_namespace(name: &str) -> Result<(), NameError> {
    check("namespace", name, 127, &[])
}

pub fn check_image(name: &str) -> Result<(), NameError> {
    check("image", name, 250, &['+'])
}

impl ImageSpec {
    /// Parses `image`, `pool/image` or `pool/namespace/image`; the missing
    /// parts come from the step's pool and namespace.
    pub fn parse(s: &str, pool: &str, namespace: Option<&str>) -> Result<ImageSpec, NameError> {
        let parts: Vec<&str> = s.split('/').collect();
        let spec = match parts.as_slice() {
            [image] => ImageSpec {
                pool: pool.into(),
                namespace: namespace.map(str::to_string),
                image: (*image).into(),
            },
            [p, image] => ImageSpec {
                pool: (*p).into(),
                namespace: None,
                image: (*image).into(),
            },
            [p, ns, image] => ImageSpec {
                pool: (*p).into(),
                namespace: (!ns.is_empty()).then(|| ns.to_string()),
                image: (*image).into(),
            },
            _ => return Err(NameError::BadShape(s.into())),
        };
        check_pool(&spec.pool)?;
        if let Some(ns) = &spec.namespace {
            check_namespace(ns)?;
        }
        check_image(&spec.image)?;
        Ok(spec)
    }
}

impl fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.pool, ns, self.image),
            None => write!(f, "{}/{}", self.pool, self.image),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_qualified_names_resolve() {
        let s = ImageSpec::parse("csi-vol-1", "replicapool", None).unwrap();
        assert_eq!(s.to_string(), "replicapool/csi-vol-1");
        let s = ImageSpec::parse("other/img", "replicapool", Some("ns")).unwrap();
        assert_eq!(s.to_string(), "other/img");
        let s = ImageSpec::parse("p/ns/img", "replicapool", None).unwrap();
        assert_eq!(s.to_string(), "p/ns/img");
        let s = ImageSpec::parse("img", "p", Some("ns")).unwrap();
        assert_eq!(s.to_string(), "p/ns/img");
    }

    #[test]
    fn names_that_are_not_rbd_names_are_refused() {
        for bad in [
            "", "-rf", "a b", "a@snap", "a/b/c/d", "../x", "img;rm", "p//", ".hidden", "ima\nge",
        ] {
            assert!(
                ImageSpec::parse(bad, "replicapool", None).is_err(),
                "{bad:?}"
            );
        }
        assert!(check_pool("--pool").is_err());
        assert!(check_pool(&"p".repeat(200)).is_err());
    }
}
