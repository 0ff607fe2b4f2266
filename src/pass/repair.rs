//! Index repairs of a pass: what the `indexes` check reports, planned by
//! [`crate::indexes::plan`] as steps (`... CONCURRENTLY` outside a transaction, bounded by its
//! own statement_timeout; the ATTACH under lock_timeout) and run by the executor.

use super::*;

/// Repairs what the `indexes` check reports, for the tables marked `manageable`: leftover
/// INVALID indexes are dropped concurrently, missing partition indexes built concurrently (or
/// an existing matching one reused) and attached to the parent index. The indexes of all the
/// tables are read in one go.
pub(super) async fn repair_indexes(
    client: &mut Client,
    ctx: &mut Ctx<'_>,
    rels: &[RelName],
    manageable: &[bool],
    reports: &mut [TableReport],
) {
    let which: Vec<usize> = (0..rels.len()).filter(|&i| manageable[i]).collect();
    let names: Vec<RelName> = which.iter().map(|&i| rels[i].clone()).collect();
    let snaps = match indexes::snapshots(&*client, &names).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("reading indexes: {}", error_text(&e));
            for i in which {
                reports[i].errors.push(msg.clone());
            }
            return;
        }
    };
    for (i, snap) in which.into_iter().zip(snaps) {
        repair_table(client, ctx, &rels[i], &snap, &mut reports[i]).await;
    }
}

async fn repair_table(
    client: &mut Client,
    ctx: &mut Ctx<'_>,
    parent: &RelName,
    snap: &indexes::IndexSnapshot,
    tr: &mut TableReport,
) {
    let (repairs, left) = indexes::plan(parent, snap);
    tr.notes.extend(left);
    'repairs: for repair in &repairs {
        if ctx.stop.load(Ordering::SeqCst) {
            break;
        }
        let steps = repair.steps();
        if ctx.dry_run {
            for step in &steps {
                let _ = writeln!(ctx.out, "{}", step.render(ctx.config));
            }
            tr.indexes_repaired.push(repair.label());
            continue;
        }
        let mut exec = Executor::new(client, ctx.config);
        for step in &steps {
            if let Err(e) = exec.run(step).await {
                tr.errors.push(e.to_string());
                continue 'repairs;
            }
        }
        tracing::info!(repair = %repair.label(), "index repaired");
        tr.indexes_repaired.push(repair.label());
    }
}
