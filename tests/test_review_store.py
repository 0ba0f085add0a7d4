"""The review queue in the store: leases, accept / correct / reject / skip, stale edits,
roles and sign-in lockout, progress; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import nibabel as nib
import numpy as np
import pytest
from sqlmodel import select

from pipeline.ingest.importer import ingest
from store import labels, review
from store.auth import MAX_FAILED_LOGINS, SignInRefused, sign_in
from store.errors import InvalidInput, PermissionDenied, StaleEdit
from store.models import AuditEvent, Item, Label, LabelKind, User
from store.registry import ensure_model_version
from store.users import create_user
from tests_helpers import make_project_simple


@pytest.fixture
def queue(store, tmp_path):
    """A project of 6 slices, each with an FM proposal, and two clinicians."""
    project = make_project_simple(store, "q")
    vol = np.zeros((16, 12, 6), np.int16)
    vol[4:10, 3:8, :] = 100
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    ingest(store, project, [tmp_path / "v.nii.gz"])
    with store.session(immediate=True) as s:
        mv = ensure_model_version(s, "fm", "test-fm", "test")
        items = s.exec(select(Item).order_by(Item.id)).all()
        sha, _ = store.blobs.put_array((store.blobs.get_array(items[0].blob) > 50)
                                       .astype(np.uint8))
        for item in items:
            labels.record_proposal(s, item.id, sha, mv.id, "test-fm", 0.9, "worker", "test")
        ana = create_user(s, "ana", "clinician", "a long password", "admin").id
        ben = create_user(s, "ben", "clinician", "b long password", "admin").id
    return project, ana, ben


def _head(store, item_id):
    with store.session() as s:
        return labels.head(s, item_id)


def test_leases_keep_two_clinicians_apart(store, queue):
    project, ana, ben = queue
    a = review.lease_next(store, ana, project.id)
    b = review.lease_next(store, ben, project.id)
    assert a.id != b.id
    assert review.lease_next(store, ana, project.id).id == a.id  # their own lease first
    # An expired lease frees the item for someone else.
    review.lease_next(store, ana, project.id, lease=timedelta(seconds=-1))
    others = {review.lease_next(store, ben, project.id).id}
    review.skip(store, ben, b.id)
    others.add(review.lease_next(store, ben, project.id).id)
    assert a.id in others


def test_accept_writes_a_version_and_audit_and_leaves_the_queue(store, queue):
    project, ana, _ = queue
    item = review.lease_next(store, ana, project.id)
    proposal = _head(store, item.id)
    label = review.accept(store, ana, item.id, proposal.id, seconds=4.2)
    assert (label.kind, label.parent_id, label.author, label.dice_vs_parent) == (
        LabelKind.accepted, proposal.id, "ana", 1.0)
    assert label.mask_blob == proposal.mask_blob and label.seconds_spent == 4.2
    with store.session() as s:
        event = s.exec(select(AuditEvent).where(AuditEvent.action == "label.accept")).one()
        assert (event.actor, event.entity_id) == ("ana", label.id)
        assert s.get(Item, item.id).leased_by is None
        assert review.progress(s, ana, project.id).remaining == 5
    assert review.lease_next(store, ana, project.id).id != item.id


def test_a_stale_save_is_refused_and_nothing_is_overwritten(store, queue):
    project, ana, ben = queue
    item = review.lease_next(store, ana, project.id)
    seen = _head(store, item.id).id
    with store.session(immediate=True) as s:  # the model re-proposes while ana is drawing
        mv = ensure_model_version(s, "fm", "test-fm-2", "test")
        labels.record_proposal(s, item.id, _head(store, item.id).mask_blob, mv.id,
                               "test-fm-2", 0.95, "worker", "test")
    edit = np.zeros(item.shape, np.uint8)
    with pytest.raises(StaleEdit, match="changed since you opened it"):
        review.correct(store, ana, item.id, seen, edit)
    with store.session() as s:
        kinds = [lb.kind for lb in s.exec(select(Label).where(Label.item_id == item.id))]
    assert kinds == [LabelKind.proposal, LabelKind.proposal]
    # Another reviewer's lease blocks a save; a finished item cannot be reviewed twice.
    fresh = _head(store, item.id).id
    review.lease_next(store, ana, project.id, lease=timedelta(seconds=-1))
    taken = review.lease_next(store, ben, project.id)
    if taken.id == item.id:
        with pytest.raises(StaleEdit, match="being reviewed by ben"):
            review.accept(store, ana, item.id, fresh)
    review.accept(store, ben, taken.id, _head(store, taken.id).id)
    with pytest.raises(StaleEdit, match="already accepted by ben"):
        review.accept(store, ana, taken.id, _head(store, taken.id).parent_id)


def test_correct_checks_the_mask_and_records_the_edit_size(store, queue):
    project, ana, _ = queue
    item = review.lease_next(store, ana, project.id)
    head = _head(store, item.id)
    with pytest.raises(InvalidInput, match="the mask is 3x2"):
        review.correct(store, ana, item.id, head.id, np.zeros((2, 3), np.uint8))
    with pytest.raises(InvalidInput, match=r"values \[4\]"):
        review.correct(store, ana, item.id, head.id, np.full(item.shape, 4, np.uint8))
    edit = store.blobs.get_array(head.mask_blob).copy()
    edit[: edit.shape[0] // 2] = 0  # erase the top half of the proposal
    label = review.correct(store, ana, item.id, head.id, edit, seconds=12.5, interactions=3)
    assert label.kind == LabelKind.corrected and 0 < label.dice_vs_parent < 1
    assert label.interactions == 3
    np.testing.assert_array_equal(store.blobs.get_array(label.mask_blob), edit)


def test_reject_needs_a_reason(store, queue):
    project, ana, _ = queue
    item = review.lease_next(store, ana, project.id)
    head = _head(store, item.id).id
    with pytest.raises(InvalidInput, match="pick a reason"):
        review.reject(store, ana, item.id, head, "did not like it")
    label = review.reject(store, ana, item.id, head, "ambiguous", note="motion")
    assert label.kind == LabelKind.rejected and label.reason == "ambiguous: motion"
    assert label.mask_blob is None


def test_disabled_or_unknown_users_cannot_act(store, queue):
    project, ana, _ = queue
    with store.session(immediate=True) as s:
        user = s.get(User, ana)
        user.disabled = True
        s.add(user)
    with pytest.raises(PermissionDenied, match="active account"):
        review.lease_next(store, ana, project.id)
    with pytest.raises(PermissionDenied):
        review.lease_next(store, 9999, project.id)


def test_sign_in_locks_after_repeated_failures(store, queue):
    for i in range(MAX_FAILED_LOGINS):
        with pytest.raises(SignInRefused) as refused:
            sign_in(store, "ana", "wrong password")
        if i < MAX_FAILED_LOGINS - 1:
            assert str(refused.value) == "wrong user name or password"
    # The attempt that locks says so; it does not pretend to be one more wrong password.
    assert "now locked for 15 minutes" in str(refused.value)
    with pytest.raises(SignInRefused, match="locked after too many failed sign-ins"):
        sign_in(store, "ana", "a long password")
    user, token = sign_in(store, "ben", "b long password")
    assert user.name == "ben" and len(token) >= 32
    with store.session() as s:
        fails = s.exec(select(AuditEvent).where(AuditEvent.action == "auth.fail")
                       .order_by(AuditEvent.id)).all()
    # Every failed attempt is logged, the one made while locked included.
    assert [e.details["cause"] for e in fails] == ["wrong password"] * MAX_FAILED_LOGINS + [
        "locked"]
    assert fails[MAX_FAILED_LOGINS - 1].details["locked"] is True


def test_progress_counts_today_and_accept_rate(store, queue):
    project, ana, _ = queue
    for action in ("accept", "reject", "accept"):
        item = review.lease_next(store, ana, project.id)
        head = _head(store, item.id).id
        if action == "accept":
            review.accept(store, ana, item.id, head)
        else:
            review.reject(store, ana, item.id, head, "poor image quality")
    with store.session() as s:
        p = review.progress(s, ana, project.id)
    assert (p.done_today, p.remaining) == (3, 3) and p.accept_rate == pytest.approx(2 / 3)


def test_concurrent_leases_never_hand_out_the_same_item(store, queue):
    project, ana, ben = queue
    with store.session(immediate=True) as s:
        users = [ana, ben] + [create_user(s, f"c{i}", "clinician", "c long password",
                                          "admin").id for i in range(4)]
    got: dict[int, int] = {}
    barrier = threading.Barrier(len(users))

    def take(uid):
        barrier.wait()
        item = review.lease_next(store, uid, project.id)
        got[uid] = item.id if item else None

    threads = [threading.Thread(target=take, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got.values()) == sorted(set(got.values()))
    assert None not in got.values()


def test_sso_identities_map_to_existing_enabled_accounts(store):
    from store.auth import sso_sign_in

    with store.session(immediate=True) as s:
        create_user(s, "dr.lee@hospital.example", "curator", "a long password", "test")
    user, token = sso_sign_in(store, "dr.lee@hospital.example")
    assert user.role.value == "curator" and token
    with pytest.raises(SignInRefused, match="ask an admin to create one"):
        sso_sign_in(store, "eve@elsewhere.example")
    with pytest.raises(SignInRefused, match="no e-mail"):
        sso_sign_in(store, None)
