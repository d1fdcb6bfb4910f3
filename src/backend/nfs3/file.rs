//! Small whole files over NFSv3: the provisioner's own records (archive owners, restore
//! claims), never a tenant's data. CREATE is GUARDED, so of two writers exactly one
//! makes the file; the contents go in one FILE_SYNC WRITE per chunk.

use nfs3_client::nfs3_types::nfs3::{
    CREATE3args, Nfs3Option, Nfs3Result, READ3args, WRITE3args, createhow3, diropargs3, ftype3,
    nfsstat3, stable_how,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use super::pool::rpc;
use super::{Nfs3Share, name, sattr, status};
use crate::backend::{BackendError, Written};
use crate::path::RelPath;

/// Bytes per READ or WRITE: far above any record, far below any server's limit.
const CHUNK: usize = 32 * 1024;

impl Nfs3Share {
    pub(super) async fn write_new_file(
        &self,
        path: &RelPath,
        bytes: &[u8],
        mode: u32,
    ) -> Result<Written, BackendError> {
        let mut s = self.session().await?;
        let shown = path.to_string();
        let Some(parent) = s.walk(path.parent_segments()).await? else {
            return Err(status("CREATE", shown, nfsstat3::NFS3ERR_NOENT));
        };
        let args = CREATE3args {
            where_: diropargs3 {
                dir: parent.clone(),
                name: name(path.leaf().as_bytes()),
            },
            how: createhow3::GUARDED(sattr(mode, None, None)),
        };
        let fh = match rpc!(s, "CREATE", create, &args)? {
            Nfs3Result::Ok(ok) => match ok.obj {
                Nfs3Option::Some(fh) => fh,
                Nfs3Option::None => {
                    s.lookup(&parent, path.leaf().as_bytes(), &shown)
                        .await?
                        .ok_or_else(|| status("CREATE", shown.clone(), nfsstat3::NFS3ERR_NOENT))?
                        .0
                }
            },
            // Someone (or a lost reply of ours, retried) made it first: the caller reads
            // what is there and judges.
            Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) => return Ok(Written::Existed),
            Nfs3Result::Err((stat, _)) => return Err(status("CREATE", shown, stat)),
        };
        let mut offset = 0usize;
        while offset < bytes.len() {
            let end = (offset + CHUNK).min(bytes.len());
            let args = WRITE3args {
                file: fh.clone(),
                offset: offset as u64,
                count: (end - offset) as u32,
                stable: stable_how::FILE_SYNC,
                data: Opaque::borrowed(&bytes[offset..end]),
            };
            match rpc!(s, "WRITE", write, &args)? {
                // A short write is legal: go on from where it stopped.
                Nfs3Result::Ok(ok) if ok.count > 0 => offset += ok.count as usize,
                Nfs3Result::Ok(_) => return Err(status("WRITE", shown, nfsstat3::NFS3ERR_IO)),
                Nfs3Result::Err((stat, _)) => return Err(status("WRITE", shown, stat)),
            }
        }
        Ok(Written::Created)
    }

    pub(super) async fn read_small_file(
        &self,
        path: &RelPath,
        max: u64,
    ) -> Result<Option<Vec<u8>>, BackendError> {
        let mut s = self.session().await?;
        let shown = path.to_string();
        let Some(parent) = s.walk(path.parent_segments()).await? else {
            return Ok(None);
        };
        let Some((fh, attrs)) = s.lookup(&parent, path.leaf().as_bytes(), &shown).await? else {
            return Ok(None);
        };
        match attrs.type_ {
            ftype3::NF3REG => {}
            ftype3::NF3LNK => return Err(BackendError::Symlink { path: shown }),
            _ => return Err(BackendError::NotAFile { path: shown }),
        }
        if attrs.size > max {
            return Err(BackendError::TooLarge { path: shown, max });
        }
        let mut out = Vec::new();
        loop {
            let args = READ3args {
                file: fh.clone(),
                offset: out.len() as u64,
                count: CHUNK as u32,
            };
            match rpc!(s, "READ", read, &args)? {
                Nfs3Result::Ok(ok) => {
                    out.extend_from_slice(&ok.data);
                    if out.len() as u64 > max {
                        return Err(BackendError::TooLarge { path: shown, max });
                    }
                    if ok.eof || ok.data.is_empty() {
                        return Ok(Some(out));
                    }
                }
                Nfs3Result::Err((stat, _)) => return Err(status("READ", shown, stat)),
            }
        }
    }
}
