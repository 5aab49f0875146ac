-- Version 4: labctl's event log and operational tables move out of public into
-- their own schema, so an original labctl registry can share the database.

CREATE SCHEMA labctl;

ALTER TABLE public.schema_version SET SCHEMA labctl;
ALTER TABLE public.events SET SCHEMA labctl;
ALTER TABLE public.event_idempotency SET SCHEMA labctl;
ALTER SEQUENCE public.events_position_seq SET SCHEMA labctl;
ALTER TABLE public.reactor_checkpoints SET SCHEMA labctl;
ALTER TABLE public.agents SET SCHEMA labctl;

ALTER FUNCTION public.labctl_event_payload(bigint, text, integer, text, jsonb, jsonb, timestamptz) SET SCHEMA labctl;
ALTER FUNCTION public.labctl_event_digest(bytea, bigint, text, integer, text, jsonb, jsonb, timestamptz)
    SET SCHEMA labctl;
ALTER FUNCTION public.labctl_append(text[], integer[], text[], text[], text[], text) SET SCHEMA labctl;
ALTER FUNCTION public.labctl_refuse_change() SET SCHEMA labctl;

INSERT INTO labctl.schema_version (version) VALUES (4);
