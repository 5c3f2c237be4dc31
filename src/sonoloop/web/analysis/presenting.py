"""What pages and the API show of jobs, results and their forwarding."""

from __future__ import annotations

from .models import AnalysisJob, AnalysisResult, ResultForward


def forward_summary(forward: ResultForward) -> dict:
    return {
        "what": forward.what,
        "sop_instance_uid": forward.sop_instance_uid,
        "peer": forward.peer.ae_title,
        "status": forward.status,
        "attempts": forward.attempts,
        "last_error": forward.last_error,
        "next_attempt_at": forward.next_attempt_at.isoformat() if forward.next_attempt_at else None,
        "sent_at": forward.sent_at.isoformat() if forward.sent_at else None,
    }


def job_summary(job: AnalysisJob) -> dict:
    result = getattr(job, "result", None)
    return {
        "id": job.pk,
        "instance": job.instance.sop_instance_uid,
        "status": job.status,
        "reason": job.reason,
        "attempt": job.attempt,
        "retry_of": job.retry_of_id,
        "progress": round(job.progress, 3),
        "frames_done": job.frames_done,
        "frames_total": job.frames_total,
        "model": {"name": job.model_name, "version": job.model_version} if job.model_name else None,
        "worker": job.worker,
        "task": job.task_id or None,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "duration_seconds": job.duration_seconds,
        "result_version": result.version if result else None,
    }


def ejection_fraction_summary(m: dict) -> dict:
    """The EF with its verdict, in one place for API clients: ``value`` is None unless reliable."""
    return {
        "value": m.get("ef"),
        "method": "single-plane area–length, median of the beats",
        "reliable": bool(m.get("reliable")),
        "verdict": m.get("reliability") or None,
        "reasons": m.get("reliability_reasons", []),
        "spread": m.get("ef_spread"),
        "beats": [{"ed": b["ed"], "es": b["es"], "ef": b["ef"], "plausible": b.get("plausible", True)}
                  for b in m.get("beats", [])],
        "implausible_frames": m.get("implausible_frames"),
        "frames": m.get("frames"),
    }


def result_summary(result: AnalysisResult) -> dict:
    return {
        "id": result.pk,
        "version": result.version,
        "job": result.job_id,
        "model": {"name": result.model_name, "version": result.model_version},
        "classes": result.classes,
        "segmentation": result.seg_sop_instance_uid or None,
        "structured_report": result.sr_sop_instance_uid or None,
        "measurements": result.measurements,
        "ejection_fraction": ejection_fraction_summary(result.measurements),
        "forwards": [forward_summary(f) for f in result.forwards.select_related("peer")],
        "created_at": result.created_at.isoformat(),
    }
