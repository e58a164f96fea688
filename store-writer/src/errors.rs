//! From the library's errors to the typed [`StoreWriterError`] replies (each naming the path
//! at fault).

use ward_proto::hash::Hash;
use ward_proto::ipc::store_writer::StoreWriterError;
use ward_proto::nar::NarError;
use ward_proto::path_info::ValidPathInfo;
use ward_proto::store_path::{StoreDir, StorePath, StorePathError};
use ward_store::db::DbError;
use ward_store::fsutil::FsError;
use ward_store::AddError;

/// The rule a name broke, without repeating the name.
pub fn name_reason(e: &StorePathError) -> String {
    match e {
        StorePathError::BadName { reason, .. } => (*reason).to_owned(),
        other => other.to_string(),
    }
}

/// What is known about the request whose addition failed, to build typed errors.
#[derive(Debug)]
pub struct AddContext<'a> {
    /// The store directory.
    pub store_dir: &'a StoreDir,
    /// The claimed info (AddPathFromNar only).
    pub claimed: Option<&'a ValidPathInfo>,
    /// The name of the path (AddContent) or its printed path.
    pub shown: String,
}

impl AddContext<'_> {
    fn io(&self, operation: &str, message: impl std::fmt::Display) -> StoreWriterError {
        StoreWriterError::Io {
            operation: operation.to_owned(),
            path: self.shown.clone(),
            message: message.to_string(),
        }
    }

    fn bad_ca(&self, reason: impl Into<String>) -> StoreWriterError {
        StoreWriterError::BadContentAddress {
            path: self.shown.clone(),
            reason: reason.into(),
        }
    }

    fn parse_printed(&self, printed: &str) -> Option<StorePath> {
        self.store_dir.parse_path(printed).ok()
    }
}

/// Maps a failed addition to the reply the frontend gets.
pub fn add_error(e: AddError, ctx: &AddContext<'_>) -> StoreWriterError {
    let claimed_path = ctx.claimed.map(|info| &info.path);
    match e {
        AddError::BadName { name, source } => StoreWriterError::BadName {
            reason: name_reason(&source),
            name,
        },
        AddError::InvalidReference { reference, .. } => {
            match (claimed_path, ctx.parse_printed(&reference)) {
                (Some(path), Some(reference)) => StoreWriterError::InvalidReference {
                    path: path.clone(),
                    reference,
                },
                (None, Some(reference)) => StoreWriterError::NotValid { path: reference },
                (_, None) => ctx.io("checking the references of", reference),
            }
        }
        AddError::NarHashNotSha256 { algo, .. } => match claimed_path {
            Some(path) => StoreWriterError::MalformedNar {
                path: path.clone(),
                reason: format!("the claimed nar hash uses {algo}; nar hashes are sha256"),
            },
            None => ctx.io("checking the nar hash of", format!("it uses {algo}")),
        },
        AddError::Nar { source, .. } => nar_error(source, ctx),
        AddError::Read { source, .. } => ctx.io("reading the data of", source),
        AddError::HashMismatch { specified, got, .. } => match (ctx.claimed, parse(&got)) {
            // `got` is the hash of the whole stream: it was parsed to its end as one NAR.
            (Some(info), Some(actual)) => StoreWriterError::HashMismatch {
                path: info.path.clone(),
                expected: info.nar_hash,
                actual,
            },
            _ => ctx.io(
                "hashing",
                format!("hash mismatch: specified {specified}, got {got}"),
            ),
        },
        AddError::SizeMismatch { specified, got, .. } => match claimed_path {
            Some(path) => StoreWriterError::SizeMismatch {
                path: path.clone(),
                expected: specified,
                actual: got,
            },
            None => ctx.io(
                "sizing",
                format!("size mismatch: specified {specified}, got {got}"),
            ),
        },
        AddError::LongerThanClaimed { specified, .. } => match claimed_path {
            Some(path) => StoreWriterError::LongerThanClaimed {
                path: path.clone(),
                expected: specified,
            },
            None => ctx.io(
                "sizing",
                format!("the NAR is longer than the {specified} bytes claimed"),
            ),
        },
        AddError::CaHashMismatch { specified, got, .. } => {
            let parsed = (
                Hash::parse_any_prefixed(&specified),
                Hash::parse_any_prefixed(&got),
            );
            match (claimed_path, parsed) {
                (Some(path), (Ok(expected), Ok(actual))) => StoreWriterError::HashMismatch {
                    path: path.clone(),
                    expected,
                    actual,
                },
                _ => ctx.bad_ca(format!("the content hashes to {got}, not to {specified}")),
            }
        }
        AddError::NotContentAddressed(_) => not_content_addressed(ctx),
        AddError::NotAFlatFile { ca, .. } => ctx.bad_ca(format!(
            "content address '{ca}' needs a single regular file"
        )),
        AddError::UnsupportedMethod { method, .. } => ctx.bad_ca(format!(
            "content-addressing method '{method}' is not supported"
        )),
        AddError::MakePath { source, .. } => ctx.bad_ca(source.to_string()),
        AddError::Fs { source, .. } => fs_error(source, ctx),
        AddError::Lock { source, .. } => ctx.io("locking", source),
        AddError::Db { source, .. } => db_error(*source, &ctx.shown),
    }
}

/// A hash as the library's errors print it (`<algo>:<nix32>`).
fn parse(printed: &str) -> Option<Hash> {
    Hash::parse_any_prefixed(printed).ok()
}

/// A claimed content address that does not give the claimed path: name the path it gives.
fn not_content_addressed(ctx: &AddContext<'_>) -> StoreWriterError {
    let reason = "it claims to be content-addressed but is not";
    let Some(info) = ctx.claimed else {
        return ctx.bad_ca(reason);
    };
    let Some(ca) = &info.ca else {
        return ctx.bad_ca(reason);
    };
    let mut others = info.references.clone();
    let has_self = others.remove(&info.path);
    match ctx
        .store_dir
        .make_path_from_ca(info.path.name(), ca, &others, has_self)
    {
        Ok(computed) => StoreWriterError::PathMismatch {
            claimed: info.path.clone(),
            computed,
        },
        Err(e) => ctx.bad_ca(format!("{reason}: {e}")),
    }
}

fn nar_error(e: NarError, ctx: &AddContext<'_>) -> StoreWriterError {
    match e {
        NarError::Truncated { .. } => StoreWriterError::DataTruncated {
            path: ctx.shown.clone(),
        },
        NarError::Io { .. } | NarError::Fs { .. } | NarError::Write { .. } => {
            ctx.io("unpacking the nar of", e)
        }
        other => match ctx.claimed {
            Some(info) => StoreWriterError::MalformedNar {
                path: info.path.clone(),
                reason: other.to_string(),
            },
            None => ctx.bad_ca(format!("malformed nar: {other}")),
        },
    }
}

fn fs_error(e: FsError, ctx: &AddContext<'_>) -> StoreWriterError {
    match e {
        FsError::Io {
            action,
            path,
            source,
        } => StoreWriterError::Io {
            operation: action.to_owned(),
            path: path.display().to_string(),
            message: source.to_string(),
        },
        other => ctx.io("adding", other),
    }
}

/// Maps a database failure; `shown` is the path the request was about.
pub fn db_error(e: DbError, shown: &str) -> StoreWriterError {
    match e {
        DbError::NotValid(p) => {
            match StorePath::from_base_name(p.rsplit('/').next().unwrap_or(p.as_str())) {
                Ok(path) => StoreWriterError::NotValid { path },
                Err(_) => StoreWriterError::Database {
                    message: format!("path '{p}' is not valid"),
                },
            }
        }
        DbError::NotContentAddressed(p) => StoreWriterError::BadContentAddress {
            path: p,
            reason: "it claims to be content-addressed but is not".into(),
        },
        other => {
            let message = other.to_string();
            StoreWriterError::Database {
                message: if message.contains(shown) {
                    message
                } else {
                    format!("{shown}: {message}")
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use ward_proto::content_address::{ContentAddress, ContentAddressMethod, FileIngestionMethod};
    use ward_proto::hash::HashAlgo;

    use super::*;

    fn path(base: &str) -> StorePath {
        StorePath::from_base_name(base).unwrap()
    }

    fn claimed() -> ValidPathInfo {
        let mut info = ValidPathInfo::new(
            path("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f"),
            Hash::compute(HashAlgo::Sha256, b"claimed"),
        );
        info.nar_size = 10;
        info
    }

    fn ctx<'a>(store_dir: &'a StoreDir, info: Option<&'a ValidPathInfo>) -> AddContext<'a> {
        AddContext {
            store_dir,
            claimed: info,
            shown: "/nix/store/ab3li50xq0nl4q5lxdyinb8w8y13my9s-f".into(),
        }
    }

    #[test]
    fn hash_mismatch_names_the_path_and_both_hashes() {
        let store_dir = StoreDir::default();
        let info = claimed();
        let e = add_error(
            AddError::HashMismatch {
                path: "x".into(),
                specified: info.nar_hash.to_prefixed_nix32(),
                got: Hash::compute(HashAlgo::Sha256, b"actual").to_prefixed_nix32(),
            },
            &ctx(&store_dir, Some(&info)),
        );
        assert!(matches!(e, StoreWriterError::HashMismatch { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f"),
            "{text}"
        );
        assert!(text.contains(&info.nar_hash.to_prefixed_nix32()), "{text}");
        assert!(
            text.contains(&Hash::compute(HashAlgo::Sha256, b"actual").to_prefixed_nix32()),
            "{text}"
        );
    }

    #[test]
    fn truncated_nars_are_data_truncated_and_bad_ones_malformed() {
        let store_dir = StoreDir::default();
        let info = claimed();
        let e = add_error(
            AddError::Nar {
                path: "x".into(),
                source: NarError::Truncated {
                    offset: 3,
                    path: "/".into(),
                    what: "tag",
                },
            },
            &ctx(&store_dir, Some(&info)),
        );
        assert!(matches!(e, StoreWriterError::DataTruncated { .. }), "{e}");
        let e = add_error(
            AddError::Nar {
                path: "x".into(),
                source: NarError::BadMagic,
            },
            &ctx(&store_dir, Some(&info)),
        );
        assert!(matches!(e, StoreWriterError::MalformedNar { .. }), "{e}");
        let e = add_error(
            AddError::Nar {
                path: "x".into(),
                source: NarError::BadMagic,
            },
            &ctx(&store_dir, None),
        );
        assert!(e.to_string().contains("malformed nar"), "{e}");
    }

    #[test]
    fn invalid_references_are_typed() {
        let store_dir = StoreDir::default();
        let info = claimed();
        let reference = "/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-g";
        let e = add_error(
            AddError::InvalidReference {
                path: "x".into(),
                reference: reference.into(),
            },
            &ctx(&store_dir, Some(&info)),
        );
        assert_eq!(
            e,
            StoreWriterError::InvalidReference {
                path: info.path.clone(),
                reference: path("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-g"),
            }
        );
        let e = add_error(
            AddError::InvalidReference {
                path: "x".into(),
                reference: reference.into(),
            },
            &ctx(&store_dir, None),
        );
        assert!(matches!(e, StoreWriterError::NotValid { .. }), "{e}");
    }

    #[test]
    fn a_false_content_address_names_the_path_it_gives() {
        let store_dir = StoreDir::default();
        let mut info = claimed();
        info.ca = Some(ContentAddress {
            method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
            hash: Hash::compute(HashAlgo::Sha256, b"content"),
        });
        let e = add_error(
            AddError::NotContentAddressed("x".into()),
            &ctx(&store_dir, Some(&info)),
        );
        let StoreWriterError::PathMismatch { claimed, computed } = e else {
            panic!("{e}");
        };
        assert_eq!(claimed, info.path);
        assert_ne!(computed, info.path);
    }

    #[test]
    fn database_errors_name_the_path() {
        let e = db_error(
            DbError::NotValid("/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-g".into()),
            "/nix/store/x",
        );
        assert!(matches!(e, StoreWriterError::NotValid { .. }), "{e}");
        let e = db_error(DbError::CaDerivationsDisabled, "/nix/store/x-y");
        assert!(e.to_string().contains("/nix/store/x-y"), "{e}");
    }
}
