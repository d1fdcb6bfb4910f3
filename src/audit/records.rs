//! Who each archive was made from: its record in the share's metadata directory
//! (`plan::archive`), read for the report. An archive without one is shown as such.

use super::ShareReport;
use crate::backend::Share;
use crate::plan::archive::{ArchiveRecord, MAX_RECORD_BYTES, record_path};

pub(super) async fn read_owners<S: Share>(share: &S, report: &mut ShareReport) {
    for a in &mut report.archives {
        let Ok(path) = record_path(&a.name) else {
            continue;
        };
        match share.read_file(&path, MAX_RECORD_BYTES).await {
            Ok(None) => {}
            Ok(Some(bytes)) => match ArchiveRecord::parse(&bytes, &a.name) {
                Ok(r) => {
                    a.recorded = true;
                    a.namespace = Some(r.namespace);
                    a.claim = Some(r.claim);
                }
                Err(e) => a.record_error = Some(e.to_string()),
            },
            Err(e) => a.record_error = Some(e.to_string()),
        }
    }
}
