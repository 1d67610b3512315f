//! `policy-builder new`: a policy crate that builds and tests on its own against the SDK this
//! builder builds engines with, from `templates/new/`.

use anyhow::{Context, bail};
use serde_json::json;
use std::path::{Path, PathBuf};

const CARGO_TOML: &str = include_str!("../../templates/new/Cargo.toml.tera");
const DEFINITION: &str = include_str!("../../templates/new/policy-definition.yaml.tera");
const LIB_RS: &str = include_str!("../../templates/new/lib.rs.tera");
const README: &str = include_str!("../../templates/new/README.md.tera");

/// The first version of a new policy.
const VERSION: &str = "0.1.0";

/// What to scaffold.
#[derive(Debug)]
pub struct NewPolicy<'a> {
    /// The policy's name (lower-case words joined by `-`).
    pub name: &'a str,
    /// Whether it runs in the request phase.
    pub request: bool,
    /// Whether it runs in the response phase.
    pub response: bool,
    /// Where to write it (default `NAME/v0.1.0`).
    pub dir: Option<&'a Path>,
}

/// Checks a policy name as the definition schema does; the problem and the fix otherwise.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let words_ok = name.split('-').all(|word| {
        !word.is_empty()
            && word
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    let starts_ok = name.starts_with(|c: char| c.is_ascii_lowercase());
    if !(words_ok && starts_ok && name.len() <= 64) {
        bail!(
            "`{name}` is not a policy name: use lower-case words of letters and digits joined by '-', \
             starting with a letter, at most 64 characters (e.g. `header-stamp`)"
        );
    }
    Ok(())
}

/// `header-stamp` -> `HeaderStamp`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// Writes the crate; the summary (directory, files, the manifest entry to add).
///
/// # Errors
/// A bad name, a directory that already holds files, or one that cannot be written.
pub fn scaffold(
    new: &NewPolicy<'_>,
    sdk_dir: &Path,
    sdk_version: &cargo_metadata::semver::Version,
) -> anyhow::Result<serde_json::Value> {
    check_name(new.name)?;
    if !new.request && !new.response {
        bail!(
            "a policy runs in at least one phase: pass --phases request, response or request,response"
        );
    }
    let dir: PathBuf = new.dir.map_or_else(
        || PathBuf::from(new.name).join(format!("v{VERSION}")),
        Path::to_path_buf,
    );
    if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "{} already holds files: pass --dir with a new or empty directory",
            dir.display()
        );
    }
    let sdk_dir = sdk_dir
        .canonicalize()
        .with_context(|| format!("finding the SDK at {}", sdk_dir.display()))?;
    let phases: Vec<&str> = [("request", new.request), ("response", new.response)]
        .into_iter()
        .filter_map(|(phase, on)| on.then_some(phase))
        .collect();
    let uri = if dir.is_absolute() {
        dir.display().to_string()
    } else {
        format!("./{}", dir.display())
    };
    let mut context = tera::Context::new();
    context.insert("name", new.name);
    context.insert("version", VERSION);
    context.insert("lib_name", &new.name.replace('-', "_"));
    context.insert("type_name", &type_name(new.name));
    context.insert("request", &new.request);
    context.insert("response", &new.response);
    context.insert("phases", &phases.join(", "));
    context.insert("phases_words", &phases.join(" and the "));
    context.insert(
        "sdk_requirement",
        &format!("{}.{}", sdk_version.major, sdk_version.minor),
    );
    context.insert("sdk_dir", &sdk_dir.display().to_string());
    context.insert("uri", &uri);
    context.insert(
        "test_imports",
        if new.response {
            "{Metadata, Request, Response}"
        } else {
            "Request"
        },
    );

    // Everything is rendered before anything is written.
    let mut rendered = Vec::new();
    for (path, template) in [
        ("Cargo.toml", CARGO_TOML),
        ("policy-definition.yaml", DEFINITION),
        ("src/lib.rs", LIB_RS),
        ("README.md", README),
    ] {
        let mut tera = tera::Tera::default();
        tera.autoescape_on(Vec::new());
        let text = tera
            .add_raw_template(path, template)
            .and_then(|()| tera.render(path, &context))
            .with_context(|| format!("rendering {path}"))?;
        rendered.push((path, text));
    }
    let mut files = Vec::new();
    for (path, text) in rendered {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
        files.push(target.display().to_string());
    }
    // The definition it wrote must be one the builder accepts.
    let definition = dir.join("policy-definition.yaml");
    policy_definition::PolicyDefinition::from_yaml(
        &std::fs::read_to_string(&definition).context("reading the new definition")?,
    )
    .with_context(|| format!("{} is not a valid definition", definition.display()))?;
    Ok(json!({
        "created": dir.display().to_string(),
        "files": files,
        "manifestEntry": {"name": new.name, "version": VERSION, "uri": uri},
    }))
}
