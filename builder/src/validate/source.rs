//! The crate's source, through `syn`: it exports its policy with `export_policy!` at the crate
//! root, and implements the SDK trait of every declared phase and of no other.

use super::trait_of;
use crate::report::Problem;
use policy_definition::Phase;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Ident, Item, Token};

/// The most source files followed from `src/lib.rs` through `mod` declarations.
const MAX_FILES: usize = 500;

/// A trait implementation found in the crate.
struct Impl {
    trait_name: String,
    self_type: String,
    file: PathBuf,
    line: usize,
}

/// What `export_policy!(Type, phases = [...], definition = ...)` says.
struct Export {
    self_type: String,
    phases: Vec<Ident>,
    has_definition: bool,
    line: usize,
}

pub(super) fn check(
    lib_rs: &Path,
    definition_file: &Path,
    declared: &[Phase],
    problems: &mut Vec<Problem>,
) {
    let mut impls = Vec::new();
    let mut files = 0;
    let root = match parse(lib_rs) {
        Ok(file) => file,
        Err(problem) => {
            problems.push(problem);
            return;
        }
    };
    collect_impls(
        &root.items,
        lib_rs,
        &module_dir(lib_rs, true),
        &mut impls,
        &mut files,
        problems,
    );

    let exports: Vec<_> = root
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Macro(m)
                if m.mac
                    .path
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == "export_policy") =>
            {
                Some(m)
            }
            _ => None,
        })
        .collect();
    let export = match exports.as_slice() {
        [] => {
            problems.push(
                Problem::new("the crate does not export a policy at its root")
                    .in_file(lib_rs)
                    .fix("add `policy_sdk::export_policy!(YourPolicy, phases = [request]);` to src/lib.rs (outside any module)"),
            );
            return;
        }
        [one] => one,
        [_, second, ..] => {
            problems.push(
                Problem::new("export_policy! is called more than once; a crate exports one policy")
                    .in_file(lib_rs)
                    .at_line(second.span().start().line)
                    .fix("put each policy in its own crate"),
            );
            return;
        }
    };
    let export = match parse_export(&export.mac.tokens, export.span().start().line) {
        Ok(e) => e,
        Err(e) => {
            problems.push(
                Problem::new(format!("cannot read the export_policy! call: {e}"))
                    .in_file(lib_rs)
                    .at_line(export.span().start().line)
                    .fix("write it as `policy_sdk::export_policy!(YourPolicy, phases = [request, response]);`"),
            );
            return;
        }
    };
    if export.has_definition {
        problems.push(
            Problem::new("export_policy! passes its own `definition`; the builder validates policy-definition.yaml and that file must be what is compiled in")
                .in_file(lib_rs)
                .at_line(export.line)
                .fix("remove the `definition = ...` argument; the macro then embeds policy-definition.yaml"),
        );
    }

    let exported: BTreeSet<String> = export.phases.iter().map(ToString::to_string).collect();
    let declared_names: BTreeSet<String> = declared.iter().map(ToString::to_string).collect();
    if exported != declared_names {
        problems.push(
            Problem::new(format!(
                "export_policy! lists phases [{}] but {} declares [{}]",
                join(&exported),
                definition_file.display(),
                join(&declared_names)
            ))
            .in_file(lib_rs)
            .at_line(export.line)
            .fix("list the same phases in both places"),
        );
    }
    for phase in [Phase::Request, Phase::Response] {
        let name = trait_of(phase);
        let found = impls
            .iter()
            .find(|i| i.trait_name == name && i.self_type == export.self_type);
        match (declared.contains(&phase), found) {
            (true, None) => problems.push(
                Problem::new(format!(
                    "the definition declares the {phase} phase but {} does not implement policy_sdk::{name}",
                    export.self_type
                ))
                .in_file(lib_rs)
                .at_line(export.line)
                .fix(format!(
                    "implement `{name} for {}`, or remove `{phase}` from phases in policy-definition.yaml and export_policy!",
                    export.self_type
                )),
            ),
            (false, Some(found)) => problems.push(
                Problem::new(format!(
                    "{} implements policy_sdk::{name} but the definition does not declare the {phase} phase, so it would never run",
                    export.self_type
                ))
                .in_file(&found.file)
                .at_line(found.line)
                .fix(format!(
                    "add `{phase}` to phases in policy-definition.yaml and export_policy!, or remove the implementation"
                )),
            ),
            _ => {}
        }
    }
}

fn parse(file: &Path) -> Result<syn::File, Problem> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Problem::new(format!("cannot read it: {e}")).in_file(file))?;
    syn::parse_file(&text).map_err(|e| {
        Problem::new(format!("not valid Rust: {e}"))
            .in_file(file)
            .at_line(e.span().start().line)
            .fix("make the crate compile with `cargo check` first")
    })
}

/// Where `mod x;` declared in `file` looks for `x.rs` / `x/mod.rs`.
fn module_dir(file: &Path, is_root: bool) -> PathBuf {
    let parent = file.parent().unwrap_or(Path::new("."));
    let stem = file.file_stem().unwrap_or_default();
    if is_root || stem == "mod" {
        parent.to_path_buf()
    } else {
        parent.join(stem)
    }
}

fn collect_impls(
    items: &[Item],
    file: &Path,
    dir: &Path,
    impls: &mut Vec<Impl>,
    files: &mut usize,
    problems: &mut Vec<Problem>,
) {
    for item in items {
        match item {
            Item::Impl(imp) => {
                let Some((_, path, _)) = &imp.trait_ else {
                    continue;
                };
                let (Some(trait_name), syn::Type::Path(ty)) =
                    (path.segments.last(), imp.self_ty.as_ref())
                else {
                    continue;
                };
                if let Some(self_type) = ty.path.segments.last() {
                    impls.push(Impl {
                        trait_name: trait_name.ident.to_string(),
                        self_type: self_type.ident.to_string(),
                        file: file.to_path_buf(),
                        line: imp.span().start().line,
                    });
                }
            }
            Item::Mod(module) => {
                let child_dir = dir.join(module.ident.to_string());
                if let Some((_, inline)) = &module.content {
                    collect_impls(inline, file, &child_dir, impls, files, problems);
                    continue;
                }
                *files += 1;
                if *files > MAX_FILES {
                    continue;
                }
                let candidates = [
                    dir.join(format!("{}.rs", module.ident)),
                    child_dir.join("mod.rs"),
                ];
                let Some(path) = candidates.iter().find(|p| p.is_file()) else {
                    continue; // cfg'd out or generated: the compiler has the last word
                };
                match parse(path) {
                    Ok(parsed) => {
                        let next = module_dir(path, false);
                        collect_impls(&parsed.items, path, &next, impls, files, problems);
                    }
                    Err(problem) => problems.push(problem),
                }
            }
            _ => {}
        }
    }
}

fn parse_export(tokens: &proc_macro2::TokenStream, line: usize) -> syn::Result<Export> {
    use syn::parse::Parser;
    let parser = |input: syn::parse::ParseStream<'_>| {
        let ty: syn::Type = input.parse()?;
        input.parse::<Token![,]>()?;
        let key: Ident = input.parse()?;
        if key != "phases" {
            return Err(syn::Error::new(key.span(), "expected `phases = [...]`"));
        }
        input.parse::<Token![=]>()?;
        let content;
        syn::bracketed!(content in input);
        let phases = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
        let mut has_definition = false;
        if input.peek(Token![,]) {
            input.parse::<Token![,]>()?;
            if !input.is_empty() {
                let key: Ident = input.parse()?;
                if key != "definition" {
                    return Err(syn::Error::new(key.span(), "expected `definition = ...`"));
                }
                input.parse::<Token![=]>()?;
                let _: syn::Expr = input.parse()?;
                has_definition = true;
                let _ = input.parse::<Option<Token![,]>>()?;
            }
        }
        let self_type = match &ty {
            syn::Type::Path(p) => p
                .path
                .segments
                .last()
                .map(|s| s.ident.to_string())
                .unwrap_or_default(),
            _ => {
                return Err(syn::Error::new(
                    ty.span(),
                    "expected the policy's type name",
                ));
            }
        };
        Ok(Export {
            self_type,
            phases: phases.into_iter().collect(),
            has_definition,
            line,
        })
    };
    parser.parse2(tokens.clone())
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}
