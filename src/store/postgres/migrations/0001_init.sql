-- chat-service PostgreSQL schema, version 1.
--
-- Everything lives in the schema "chat", so the tables can share Django's
-- database without meeting its apps' tables, grants can be given per
-- schema, and `pg_dump --schema=chat` backs up exactly the chat data.
--
-- Ids are the 12 bytes of the ObjectIds the API shows as 24 hex digits:
-- bytea is half the size of char(24) in every row and index, compares as
-- plain bytes (byte order = ObjectId order = hex order), and needs no
-- case rules. Read them as hex with encode(id, 'hex').
--
-- Applied by chat-service at start (inside a transaction holding an
-- advisory lock), or by hand:  psql "$CHAT_POSTGRES_URL" -1 -v ON_ERROR_STOP=1 -f 0001_init.sql
-- The last statement records the version, either way.

CREATE SCHEMA IF NOT EXISTS chat;

CREATE TABLE IF NOT EXISTS chat.schema_migrations (
    version     integer PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chat.conversations (
    id         bytea PRIMARY KEY CHECK (octet_length(id) = 12),
    lesson_id  bigint NOT NULL,
    mentor_id  bigint NOT NULL,
    student_id bigint NOT NULL,
    created_at timestamptz NOT NULL,
    -- The seq of the newest message; the writer bumps it in the batch's
    -- statement, which also locks the row, so nodes sharing the database
    -- number one conversation's messages one after another.
    last_seq   bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    CONSTRAINT conversations_key UNIQUE (lesson_id, mentor_id, student_id)
);
-- /conversations?mentor_id= | student_id= | the caller's list, oldest first.
CREATE INDEX conversations_mentor ON chat.conversations (mentor_id, created_at, id);
CREATE INDEX conversations_student ON chat.conversations (student_id, created_at, id);

CREATE TABLE chat.messages (
    id              bytea PRIMARY KEY CHECK (octet_length(id) = 12),
    -- No foreign key: the writer inserts a message only into a
    -- conversation its statement just locked and bumped, and a per-row
    -- key check cost about a third of an insert (benches/writer.rs).
    conversation_id bytea NOT NULL,
    seq             bigint NOT NULL CHECK (seq > 0),
    sender_id       bigint NOT NULL,
    -- The text; a NUL (which PostgreSQL text cannot hold) reads as U+FFFD here
    -- and the exact UTF-8 bytes are in text_exact, set only for such texts.
    text            text NOT NULL,
    text_exact      bytea,
    created_at      timestamptz NOT NULL,
    -- The client's opaque retry key (1 to 64 bytes, any bytes).
    client_id       bytea,
    viewed_by       bigint,
    viewed_at       timestamptz
);
-- Recovery and seq cursors; also makes a seq unique in its conversation.
CREATE UNIQUE INDEX messages_conversation_seq ON chat.messages (conversation_id, seq);
-- History pages by id (the seed's cursor).
CREATE INDEX messages_conversation_id ON chat.messages (conversation_id, id);
-- A resent message (same client_id) is stored once.
CREATE UNIQUE INDEX messages_client_id ON chat.messages (conversation_id, sender_id, client_id)
    WHERE client_id IS NOT NULL;
-- Inbox: a participant's newest message, unread counts, waiting_since.
CREATE INDEX messages_conversation_sender_seq ON chat.messages (conversation_id, sender_id, seq);

-- Read cursors moved by `read`/`viewed`; a participant's own newest message
-- counts as read without a row here (posting moves the cursor).
CREATE TABLE chat.read_cursors (
    conversation_id bytea NOT NULL,
    user_id         bigint NOT NULL,
    last_read_seq   bigint NOT NULL CHECK (last_read_seq >= 0),
    PRIMARY KEY (conversation_id, user_id)
);

INSERT INTO chat.schema_migrations (version, description) VALUES (1, 'conversations, messages, read cursors');
