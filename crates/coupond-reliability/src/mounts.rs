//! Small file systems to fail on purpose (root only, as on CI and the dev machines): a
//! tmpfs of a few MiB to fill up, and an ext4 image on a loop device to shut down under
//! a running server (every read and write then fails with EIO, as on a dying disk) or to
//! mount read-only. Unmounted again on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {} (these tests need root, as CI has)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub struct Mount {
    pub dir: PathBuf,
    image: Option<PathBuf>,
}

impl Mount {
    /// A tmpfs of `mib` MiB at `dir` (created).
    pub fn tmpfs(dir: &Path, mib: u32) -> Result<Mount> {
        std::fs::create_dir_all(dir)?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={mib}m,mode=0755"))
            .arg("tmpfs")
            .arg(dir))?;
        Ok(Mount {
            dir: dir.to_owned(),
            image: None,
        })
    }

    /// A fresh ext4 file system of `mib` MiB in `image`, mounted at `dir`.
    pub fn ext4(image: &Path, dir: &Path, mib: u32) -> Result<Mount> {
        std::fs::create_dir_all(dir)?;
        let file = std::fs::File::create(image)?;
        file.set_len(u64::from(mib) << 20)?;
        drop(file);
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image))?;
        let mount = Mount {
            dir: dir.to_owned(),
            image: Some(image.to_owned()),
        };
        mount.mount(false)?;
        Ok(mount)
    }

    fn mount(&self, read_only: bool) -> Result<()> {
        let image = self.image.as_ref().context("not an image mount")?;
        let options = if read_only { "loop,ro" } else { "loop" };
        run(Command::new("mount")
            .args(["-o", options])
            .arg(image)
            .arg(&self.dir))
    }

    /// Unmounts and mounts the image again (`read_only` or not).
    pub fn remount(&self, read_only: bool) -> Result<()> {
        run(Command::new("umount").arg(&self.dir))?;
        self.mount(read_only)
    }

    /// Shuts the ext4 file system down (EXT4_IOC_SHUTDOWN, journal flushed first): from
    /// now on every read and write on it fails with EIO until it is mounted again.
    pub fn shut_down(&self) -> Result<()> {
        use std::os::fd::AsRawFd;
        // _IOR('X', 125, __u32)
        const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587D;
        const EXT4_GOING_FLAGS_LOGFLUSH: u32 = 1;
        let dir = std::fs::File::open(&self.dir)?;
        let mut flags = EXT4_GOING_FLAGS_LOGFLUSH;
        // SAFETY: the ioctl reads one u32 through the pointer, which lives across the call.
        let rc = unsafe {
            libc::ioctl(
                dir.as_raw_fd(),
                EXT4_IOC_SHUTDOWN as _,
                &mut flags as *mut u32,
            )
        };
        if rc != 0 {
            bail!(
                "EXT4_IOC_SHUTDOWN on {}: {}",
                self.dir.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Writes a file until the file system is full; returns the bytes written.
    pub fn fill(&self, name: &str) -> Result<u64> {
        use std::io::Write;
        let mut file = std::fs::File::create(self.dir.join(name))?;
        let chunk = vec![0xA5u8; 16 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Whatever is left is less than a chunk: take it byte by byte.
        while file.write(&[0u8]).is_ok_and(|n| n == 1) {
            written += 1;
        }
        Ok(written)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}
