//! `wasmop init`: a plugin project that builds and tests outside this repository, with only
//! public registries (crates.io, the Go module proxy, npm).
//!
//! The language kit is vendored into the project from this binary (`include_str!` of the
//! kit's sources), so it always matches the ABI of the wasmop that wrote it: the Rust PDK and
//! ABI crates as path dependencies (`vendor/`), the Go kit with a `replace` to
//! `third_party/wasmop-go`, the TypeScript ABI types (`types/abi.d.ts`). Every project also
//! gets a Makefile (`build`, `test`: the fixture suite, `deploy`), fixtures for
//! `wasmop eval --test`, the parent CRD, the WasmController and its Role (from [`crate::cluster::rbac`]).
//! The templates live in `init/`; the test `tests/tests/init.rs` builds and runs all three.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::api::{ApiResource, GroupVersionKind};

use crate::crd::WasmController;

/// The plugin language of a project.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Go,
    Ts,
}

impl Lang {
    /// `rust`, `go` or `ts`.
    ///
    /// # Errors
    /// Anything else, with the accepted values.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "rust" => Ok(Lang::Rust),
            "go" => Ok(Lang::Go),
            "ts" | "typescript" => Ok(Lang::Ts),
            other => Err(Error::Option {
                flag: "--lang",
                value: other.into(),
                fix: "use rust, go or ts".into(),
            }),
        }
    }
}

/// What `wasmop init` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    pub lang: Lang,
    /// The project directory: created, or empty.
    pub dir: PathBuf,
    /// The controller's name (default: the directory's name).
    pub name: Option<String>,
    /// The parent kind (default: the name in UpperCamelCase).
    pub kind: Option<String>,
    pub group: String,
    pub version: String,
    /// Child kinds as `APIVERSION/KIND` (`v1/ConfigMap`, `apps/v1/Deployment`).
    pub children: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{flag} {value:?}: {fix}")]
    Option {
        flag: &'static str,
        value: String,
        fix: String,
    },
    #[error(
        "{dir} exists and is not empty: choose a new directory (wasmop init never overwrites files)"
    )]
    NotEmpty { dir: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The Rust PDK and ABI crates' sources, vendored verbatim.
const RUST_KIT: &[(&str, &str)] = &[
    (
        "vendor/wasmop-abi/src/lib.rs",
        include_str!("../../../plugins/abi/src/lib.rs"),
    ),
    (
        "vendor/wasmop-pdk/src/lib.rs",
        include_str!("../../../plugins/pdk-rust/src/lib.rs"),
    ),
    (
        "vendor/wasmop-pdk/src/call.rs",
        include_str!("../../../plugins/pdk-rust/src/call.rs"),
    ),
    (
        "vendor/wasmop-pdk/src/condition.rs",
        include_str!("../../../plugins/pdk-rust/src/condition.rs"),
    ),
    (
        "vendor/wasmop-pdk/src/error.rs",
        include_str!("../../../plugins/pdk-rust/src/error.rs"),
    ),
    (
        "vendor/wasmop-pdk/src/fields.rs",
        include_str!("../../../plugins/pdk-rust/src/fields.rs"),
    ),
    (
        "vendor/wasmop-pdk/src/object.rs",
        include_str!("../../../plugins/pdk-rust/src/object.rs"),
    ),
    (
        "vendor/wasmop-pdk/src/request.rs",
        include_str!("../../../plugins/pdk-rust/src/request.rs"),
    ),
    (
        "vendor/wasmop-pdk/src/response.rs",
        include_str!("../../../plugins/pdk-rust/src/response.rs"),
    ),
];

/// The Go kit's module, vendored verbatim (its tests stay in this repository).
const GO_KIT: &[(&str, &str)] = &[
    (
        "third_party/wasmop-go/go.mod",
        include_str!("../../../plugins/go/go.mod"),
    ),
    (
        "third_party/wasmop-go/go.sum",
        include_str!("../../../plugins/go/go.sum"),
    ),
    (
        "third_party/wasmop-go/wasmop/abi_gen.go",
        include_str!("../../../plugins/go/wasmop/abi_gen.go"),
    ),
    (
        "third_party/wasmop-go/wasmop/condition.go",
        include_str!("../../../plugins/go/wasmop/condition.go"),
    ),
    (
        "third_party/wasmop-go/wasmop/doc.go",
        include_str!("../../../plugins/go/wasmop/doc.go"),
    ),
    (
        "third_party/wasmop-go/wasmop/export_wasip1.go",
        include_str!("../../../plugins/go/wasmop/export_wasip1.go"),
    ),
    (
        "third_party/wasmop-go/wasmop/fields.go",
        include_str!("../../../plugins/go/wasmop/fields.go"),
    ),
    (
        "third_party/wasmop-go/wasmop/json.go",
        include_str!("../../../plugins/go/wasmop/json.go"),
    ),
    (
        "third_party/wasmop-go/wasmop/object.go",
        include_str!("../../../plugins/go/wasmop/object.go"),
    ),
    (
        "third_party/wasmop-go/wasmop/request.go",
        include_str!("../../../plugins/go/wasmop/request.go"),
    ),
    (
        "third_party/wasmop-go/wasmop/response.go",
        include_str!("../../../plugins/go/wasmop/response.go"),
    ),
];

/// The TypeScript ABI types (generated from the Rust ABI, like the Go kit's abi_gen.go).
const TS_KIT: &[(&str, &str)] = &[(
    "types/abi.d.ts",
    include_str!("../../../plugins/ts/abi.d.ts"),
)];

/// The versions the repository builds and tests with, so a generated project resolves the
/// same ones: the toolchain, the crates (the lock file, pruned by cargo on first build), the
/// Go PDK and the TypeScript tools.
const RUST_TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");
const CARGO_LOCK: &str = include_str!("../../../Cargo.lock");
const WORKSPACE_MANIFEST: &str = include_str!("../../../Cargo.toml");
const TS_EXAMPLE_PACKAGE: &str = include_str!("../../../plugins/examples/website-js/package.json");

/// The project's parameters, checked.
struct Project {
    lang: Lang,
    name: String,
    kind: String,
    group: String,
    version: String,
    children: Vec<(String, String)>,
}

/// Writes the project for `opts` into `opts.dir`. Returns the files written, relative to it.
///
/// # Errors
/// An option that is not usable ([`Error::Option`] names the flag and the fix), a directory
/// that is not empty, or a file that cannot be written.
pub fn init(opts: &Options) -> Result<Vec<PathBuf>, Error> {
    let project = Project::checked(opts)?;
    if std::fs::read_dir(&opts.dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::NotEmpty {
            dir: opts.dir.display().to_string(),
        });
    }
    let files = project.files();
    for (path, contents) in &files {
        let full = opts.dir.join(path);
        let write = |source| Error::Write {
            path: full.display().to_string(),
            source,
        };
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(write)?;
        }
        std::fs::write(&full, contents).map_err(write)?;
    }
    Ok(files.into_keys().collect())
}

impl Project {
    fn checked(opts: &Options) -> Result<Self, Error> {
        let name = match &opts.name {
            Some(n) => n.clone(),
            None => opts
                .dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        if !is_dns_label(&name, 40) {
            return Err(Error::Option {
                flag: if opts.name.is_some() { "--name" } else { "DIR" },
                value: name,
                fix: "the controller is named after the directory: use at most 40 lowercase letters, digits and '-', starting with a letter, or pass --name".into(),
            });
        }
        let kind = opts.kind.clone().unwrap_or_else(|| upper_camel(&name));
        check_kind("--kind", &kind)?;
        if !opts.group.contains('.') || !is_dns_subdomain(&opts.group) {
            return Err(Error::Option {
                flag: "--group",
                value: opts.group.clone(),
                fix: "a CRD's group is a DNS name with at least one dot, e.g. demo.example.com"
                    .into(),
            });
        }
        if !is_version(&opts.version) {
            return Err(Error::Option {
                flag: "--version",
                value: opts.version.clone(),
                fix: "use a Kubernetes version like v1, v1alpha1 or v2beta3".into(),
            });
        }
        let children = opts
            .children
            .iter()
            .map(|c| parse_child(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Project {
            lang: opts.lang,
            name,
            kind,
            group: opts.group.clone(),
            version: opts.version.clone(),
            children: if children.is_empty() {
                vec![("v1".into(), "ConfigMap".into())]
            } else {
                children
            },
        })
    }

    fn resource(&self) -> ApiResource {
        ApiResource::from_gvk(&GroupVersionKind::gvk(
            &self.group,
            &self.version,
            &self.kind,
        ))
    }

    /// The template variables.
    fn vars(&self) -> BTreeMap<&'static str, String> {
        let resource = self.resource();
        let flow = |indent: &str| {
            self.children
                .iter()
                .map(|(v, k)| format!("{indent}- {{ apiVersion: {v}, kind: {k} }}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let list: Vec<String> = self
            .children
            .iter()
            .map(|(v, k)| format!("{k} ({v})"))
            .collect();
        let mut vars = BTreeMap::from([
            ("name", self.name.clone()),
            ("kind", self.kind.clone()),
            ("group", self.group.clone()),
            ("version", self.version.clone()),
            ("api_version", resource.api_version.clone()),
            ("plural", resource.plural.clone()),
            ("singular", self.kind.to_ascii_lowercase()),
            ("crd_name", format!("{}.{}", resource.plural, self.group)),
            ("sa", format!("{}-controller", self.name)),
            ("plugin_cm", format!("{}-plugin", self.name)),
            ("children_yaml", flow("    ")),
            ("child_kinds_yaml", flow("  ")),
            ("children_list", list.join(", ")),
        ]);
        vars.extend(self.lang_vars());
        vars
    }

    fn has_config_map(&self) -> bool {
        self.children
            .iter()
            .any(|(v, k)| v == "v1" && k == "ConfigMap")
    }

    /// Every file of the project, by path.
    fn files(&self) -> BTreeMap<PathBuf, String> {
        let vars = self.vars();
        let sections = [("configmap", self.has_config_map())];
        let r = |t: &str| render(t, &vars, &sections);
        let mut files = BTreeMap::new();
        let mut add = |path: &str, contents: String| {
            files.insert(PathBuf::from(path), contents);
        };
        let controller = r(include_str!("init/common/wasmcontroller.yaml"));
        add("deploy/rbac.yaml", role_of(&controller));
        add("deploy/wasmcontroller.yaml", controller);
        add("deploy/crd.yaml", r(include_str!("init/common/crd.yaml")));
        add(
            "deploy/example.yaml",
            r(include_str!("init/common/example.yaml")),
        );
        add(
            "fixtures/new-parent.yaml",
            r(include_str!("init/common/new-parent.yaml")),
        );
        add(
            "fixtures/steady.yaml",
            r(include_str!("init/common/steady.yaml")),
        );
        add(
            "fixtures/bad-message.yaml",
            r(include_str!("init/common/bad-message.yaml")),
        );
        add(".gitignore", r(include_str!("init/common/gitignore")));
        add("README.md", r(include_str!("init/common/README.md")));
        let makefile = [
            include_str!("init/common/Makefile.head"),
            self.lang_makefile(),
            include_str!("init/common/Makefile.tail"),
        ]
        .map(r)
        .join("\n");
        add("Makefile", makefile);
        for (path, template) in self.lang_templates() {
            add(path, r(template));
        }
        for (path, contents) in self.kit() {
            add(path, contents.to_string());
        }
        files
    }

    fn lang_makefile(&self) -> &'static str {
        match self.lang {
            Lang::Rust => include_str!("init/rust/Makefile"),
            Lang::Go => include_str!("init/go/Makefile"),
            Lang::Ts => include_str!("init/ts/Makefile"),
        }
    }

    /// The language's own templates, by path.
    fn lang_templates(&self) -> Vec<(&'static str, &'static str)> {
        match self.lang {
            Lang::Rust => vec![
                ("Cargo.toml", include_str!("init/rust/Cargo.toml")),
                ("src/lib.rs", include_str!("init/rust/lib.rs")),
                (
                    "vendor/wasmop-abi/Cargo.toml",
                    include_str!("init/rust/abi.toml"),
                ),
                (
                    "vendor/wasmop-pdk/Cargo.toml",
                    include_str!("init/rust/pdk.toml"),
                ),
            ],
            Lang::Go => vec![
                ("go.mod", include_str!("init/go/go.mod")),
                ("main.go", include_str!("init/go/main.go")),
                ("main_test.go", include_str!("init/go/main_test.go")),
                (
                    "exports_wasip1.go",
                    include_str!("init/go/exports_wasip1.go"),
                ),
            ],
            Lang::Ts => vec![
                ("package.json", include_str!("init/ts/package.json")),
                ("tsconfig.json", include_str!("init/ts/tsconfig.json")),
                ("src/index.ts", include_str!("init/ts/index.ts")),
            ],
        }
    }

    /// The vendored kit and pinned versions, copied verbatim.
    fn kit(&self) -> Vec<(&'static str, &'static str)> {
        match self.lang {
            Lang::Rust => {
                let mut kit = RUST_KIT.to_vec();
                kit.push(("rust-toolchain.toml", RUST_TOOLCHAIN));
                kit.push(("Cargo.lock", CARGO_LOCK));
                kit
            }
            // The kit's go.sum holds the PDK's checksums, which the project needs too.
            Lang::Go => {
                let mut kit = GO_KIT.to_vec();
                kit.push(("go.sum", include_str!("../../../plugins/go/go.sum")));
                kit
            }
            Lang::Ts => TS_KIT.to_vec(),
        }
    }

    fn lang_vars(&self) -> Vec<(&'static str, String)> {
        let common = |lang: &str, source: &str, needs: &str, check: &str, kit: &str| {
            vec![
                ("lang_name", lang.to_string()),
                ("source_file", source.to_string()),
                ("needs", needs.to_string()),
                ("check_sentence", check.to_string()),
                ("kit_sentence", kit.to_string()),
            ]
        };
        let crate_file = self.name.replace('-', "_");
        let children_sentence = if self.has_config_map() {
            "a ConfigMap holding its `spec.message`".to_string()
        } else {
            "no children yet".to_string()
        };
        let mut vars = match self.lang {
            Lang::Rust => common(
                "Rust",
                "src/lib.rs",
                "rustup (the toolchain in rust-toolchain.toml and its wasm32-unknown-unknown target install themselves)",
                "the native unit tests (cargo test)",
                "the wasmop PDK and ABI crates are vendored in `vendor/` (path dependencies), everything else comes from crates.io at the versions in Cargo.lock.",
            ),
            Lang::Go => common(
                "Go",
                "main.go",
                "Go ≥ 1.24 (standard Go builds wasip1 plugins; go.mod asks for 1.26, which `go` fetches when older) and optionally `zstd`",
                "gofmt, go vet and the native unit tests (go test)",
                "the wasmop Go kit is vendored in `third_party/wasmop-go` (a `replace` in go.mod), its one dependency (github.com/extism/go-pdk) comes from the Go module proxy.",
            ),
            Lang::Ts => common(
                "TypeScript",
                "src/index.ts",
                "Node.js ≥ 18 with npm",
                "the type check (tsc --noEmit)",
                "the ABI types are in `types/abi.d.ts`, tsc and esbuild come from npm at pinned versions, and `wasmop js build` turns the bundle into a plugin (no extism-js needed).",
            ),
        };
        let (layout, gitignore, phony) = match self.lang {
            Lang::Rust => (
                "| `src/lib.rs` | the plugin: `reconcile` and its unit tests |\n| `vendor/` | the wasmop PDK and ABI crates |\n",
                "/target",
                " check",
            ),
            Lang::Go => (
                "| `main.go`, `exports_wasip1.go` | the plugin and its Extism export; `main_test.go` its unit tests |\n| `third_party/wasmop-go/` | the wasmop Go kit |\n",
                "",
                " check",
            ),
            Lang::Ts => (
                "| `src/index.ts` | the plugin |\n| `types/abi.d.ts` | the ABI types |\n",
                "/node_modules\n/dist",
                " check",
            ),
        };
        let (esbuild, typescript) = ts_versions();
        vars.extend([
            ("layout_rows", layout.to_string()),
            ("gitignore", gitignore.to_string()),
            ("phony", phony.to_string()),
            ("children_sentence", children_sentence),
            ("crate_name", self.name.clone()),
            ("crate_file", crate_file),
            ("go_module", format!("{}/{}", self.group, self.name)),
            ("go_pdk_require", go_pdk_require()),
            ("esbuild_version", esbuild),
            ("typescript_version", typescript),
            ("serde_version", workspace_dep("serde")),
            ("serde_json_version", workspace_dep("serde_json")),
            ("schemars_version", workspace_dep("schemars")),
            ("thiserror_version", workspace_dep("thiserror")),
            ("extism_pdk_version", workspace_dep("extism-pdk")),
        ]);
        vars
    }
}

/// `deploy/rbac.yaml`: what `wasmop rbac` prints for the generated WasmController.
fn role_of(controller_yaml: &str) -> String {
    let wc: WasmController =
        serde_yaml::from_str(controller_yaml).expect("the generated WasmController is valid");
    crate::cluster::rbac::role_yaml(&wc, None)
}

/// The version requirement of a workspace dependency (`name = "1"` or `name = { version = "1", ... }`).
fn workspace_dep(name: &str) -> String {
    let line = WORKSPACE_MANIFEST
        .lines()
        .find(|l| l.starts_with(&format!("{name} =")))
        .unwrap_or_else(|| panic!("{name} is a workspace dependency"));
    let value = line.split_once('=').map_or("", |(_, v)| v);
    let version = value
        .split_once("version = \"")
        .map_or(value, |(_, v)| v)
        .trim()
        .trim_matches(|c| c == '"' || c == '{' || c == ' ');
    version.split('"').next().unwrap_or(version).to_string()
}

/// The go-pdk requirement of the Go kit (`github.com/extism/go-pdk vX.Y.Z`).
fn go_pdk_require() -> String {
    GO_KIT[0]
        .1
        .lines()
        .find_map(|l| l.trim().strip_prefix("require "))
        .expect("plugins/go/go.mod requires go-pdk")
        .trim()
        .to_string()
}

/// The esbuild and typescript versions of the TypeScript example.
fn ts_versions() -> (String, String) {
    let package: serde_json::Value =
        serde_json::from_str(TS_EXAMPLE_PACKAGE).expect("the example's package.json is JSON");
    let v = |name: &str| {
        package["devDependencies"][name]
            .as_str()
            .unwrap_or_else(|| panic!("the example pins {name}"))
            .to_string()
    };
    (v("esbuild"), v("typescript"))
}

/// Fills `{{var}}`s and keeps or drops sections: the lines between `{{#name}}` and
/// `{{/name}}` stay when the section is on, those between `{{^name}}` and `{{/name}}` when
/// it is off. Section tags on a line of their own vanish with their line; inline, with
/// themselves.
fn render(template: &str, vars: &BTreeMap<&str, String>, sections: &[(&str, bool)]) -> String {
    let mut text = template.to_string();
    for (name, on) in sections {
        for (open, keep) in [
            (format!("{{{{#{name}}}}}"), *on),
            (format!("{{{{^{name}}}}}"), !*on),
        ] {
            let close = format!("{{{{/{name}}}}}");
            while let Some(start) = text.find(&open) {
                let Some(len) = text[start..].find(&close) else {
                    panic!("template section {open} is not closed");
                };
                let inner = text[start + open.len()..start + len].to_string();
                let end = start + len + close.len();
                let (start, end, inner) = own_lines(&text, start, end, inner);
                text.replace_range(start..end, if keep { &inner } else { "" });
            }
        }
    }
    for (key, value) in vars {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    assert!(
        !text.contains("{{"),
        "a template variable has no value: {text}"
    );
    text
}

/// Widens a section `start..end` to whole lines when its tags stand on lines of their own.
fn own_lines(text: &str, start: usize, end: usize, inner: String) -> (usize, usize, String) {
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[end..].find('\n').map_or(text.len(), |i| end + i + 1);
    let alone = text[line_start..start].trim().is_empty() && text[end..line_end].trim().is_empty();
    if !alone {
        return (start, end, inner);
    }
    let inner = inner.strip_prefix('\n').unwrap_or(&inner).to_string();
    let inner = match inner.rfind('\n') {
        Some(i) if inner[i..].trim().is_empty() => inner[..=i].to_string(),
        _ => inner,
    };
    (line_start, line_end, inner)
}

/// `APIVERSION/KIND` → (apiVersion, kind).
fn parse_child(child: &str) -> Result<(String, String), Error> {
    let bad = |fix: &str| Error::Option {
        flag: "--child",
        value: child.into(),
        fix: fix.into(),
    };
    let (api_version, kind) = child
        .rsplit_once('/')
        .ok_or_else(|| bad("use APIVERSION/KIND, e.g. v1/ConfigMap or apps/v1/Deployment"))?;
    let version = api_version.rsplit_once('/').map_or(api_version, |(_, v)| v);
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if !is_version(version) || (!group.is_empty() && !is_dns_subdomain(group)) {
        return Err(bad(
            "the part before the kind is an apiVersion: v1 for the core group, else GROUP/VERSION like apps/v1",
        ));
    }
    check_kind("--child", kind).map_err(|_| bad("the kind is UpperCamelCase, e.g. ConfigMap"))?;
    Ok((api_version.into(), kind.into()))
}

fn check_kind(flag: &'static str, kind: &str) -> Result<(), Error> {
    let ok = kind.len() <= 63
        && kind.starts_with(|c: char| c.is_ascii_uppercase())
        && kind.chars().all(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::Option {
            flag,
            value: kind.into(),
            fix: "a kind is UpperCamelCase letters and digits, e.g. Greeting".into(),
        })
    }
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.starts_with(|c: char| c.is_ascii_alphanumeric())
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

fn is_version(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else {
        return false;
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 || rest.starts_with('0') {
        return false;
    }
    let tail = &rest[digits..];
    tail.is_empty()
        || ["alpha", "beta"].iter().any(|stage| {
            tail.strip_prefix(stage)
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
}

fn upper_camel(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// What to do next, for the person who ran `wasmop init`.
pub fn next_steps(opts: &Options) -> String {
    let dir = opts.dir.display();
    format!(
        "next:\n  cd {dir}\n  make build test        # the plugin, and its fixture suite\n  cat README.md          # deploying it: CRD, RBAC, plugin ConfigMap, WasmController\n"
    )
}

#[cfg(test)]
mod tests;
