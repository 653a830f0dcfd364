//! Which accelerator can run guests here: real hardware virtualization (KVM with VT-x/AMD-V),
//! PVM (a software KVM for nested use that runs unmodified Linux guests far too slowly), or
//! none. `auto` backend selection uses microVMs only on real KVM.

use std::path::Path;

/// What this host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Virt {
    /// `/dev/kvm` backed by hardware virtualization.
    Kvm,
    /// `/dev/kvm` backed by PVM.
    Pvm,
    /// No usable `/dev/kvm`.
    None(String),
}

impl Virt {
    /// One line saying what was found and what it means.
    pub fn explain(&self) -> String {
        match self {
            Virt::Kvm => "KVM with hardware virtualization".into(),
            Virt::Pvm => "/dev/kvm is PVM (software KVM for nested use): unmodified Linux guests run too slowly; microVMs would need TCG".into(),
            Virt::None(why) => format!("no usable KVM: {why}"),
        }
    }
}

/// Looks at this host (`/` = `root`, for tests).
pub fn detect(root: &Path) -> Virt {
    let kvm = root.join("dev/kvm");
    if !kvm.exists() {
        return Virt::None("/dev/kvm does not exist".into());
    }
    let modules = root.join("sys/module");
    let loaded = |m: &str| modules.join(m).exists();
    if loaded("kvm_pvm") {
        return Virt::Pvm;
    }
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hw && (loaded("kvm_intel") || loaded("kvm_amd")) {
        Virt::Kvm
    } else if hw {
        Virt::None("the CPU has VT-x/AMD-V but neither kvm_intel nor kvm_amd is loaded".into())
    } else {
        Virt::None("/dev/kvm exists but the CPU shows no vmx/svm flag".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(files: &[(&str, &str)], dirs: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for (f, text) in files {
            let p = t.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        t
    }

    #[test]
    fn tells_kvm_from_pvm_from_none() {
        let vmx = "flags\t: fpu vme vmx sse2\n";
        let t = host(
            &[("dev/kvm", ""), ("proc/cpuinfo", vmx)],
            &["sys/module/kvm", "sys/module/kvm_intel"],
        );
        assert_eq!(detect(t.path()), Virt::Kvm);

        let t = host(
            &[
                ("dev/kvm", ""),
                ("proc/cpuinfo", "flags\t: fpu hypervisor\n"),
            ],
            &["sys/module/kvm", "sys/module/kvm_pvm"],
        );
        assert_eq!(detect(t.path()), Virt::Pvm);

        let t = host(&[("proc/cpuinfo", vmx)], &["sys/module/kvm_intel"]);
        assert!(matches!(detect(t.path()), Virt::None(w) if w.contains("does not exist")));

        let t = host(&[("dev/kvm", ""), ("proc/cpuinfo", "flags\t: fpu\n")], &[]);
        assert!(matches!(detect(t.path()), Virt::None(w) if w.contains("no vmx/svm")));
    }
}
