# exporter.py's classes as extension types, for the compiled build (see transforms/core_build.py)

from transforms.audiences cimport AudienceSet
from transforms.export_decision cimport ExportDecider, PathMatcher
from transforms.merge cimport MergePolicies
from transforms.profile_state cimport ProfileState
from transforms.record_format cimport RecordFormatter


cdef class ProfileExporter:
    cdef public AudienceSet audiences
    cdef public MergePolicies policies
    cdef public ExportDecider decider
    cdef public RecordFormatter formatter
    cdef public PathMatcher mapped_attributes
    cdef public object until_ms, audience_ids, retention_ms, keeps_events, timed, expiring, consent, reads_now
    cdef public object consent_inputs, max_events, metadata, counts
    cpdef list update_all(self, key, ProfileState state, updates)
    cpdef list update(self, key, ProfileState state, update, list out=*)
    cpdef _evaluate(self, key, ProfileState state, now, event_time_ms, identities_changed, attribute_written, out, dirty)
    cpdef _format(self, key, ProfileState state, views, plans, now, event_time_ms, out)
