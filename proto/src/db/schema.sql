-- ward: the store database schema, version 10 (the `schema` file next to db.sqlite says "10").
--
-- Table, column, index and trigger names, column types and constraints are those of Nix's
-- db.sqlite, so that a host can switch between nix-daemon and ward on the same store. Run once,
-- on a new database, after the open pragmas (see `ward_proto::db`). Idempotent.

-- One row per valid store path.
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,  -- full store path, e.g. /nix/store/<hash>-<name>
    hash             text not null,         -- NAR hash as "sha256:<lowercase base16>"
    registrationTime integer not null,      -- unix seconds
    deriver          text,                  -- full .drv path, NULL when unknown
    narSize          integer,               -- NULL when unknown
    ultimate         integer,               -- 1 when built locally; NULL (never 0) otherwise
    sigs             text,                  -- signatures joined by single spaces; NULL if none
    ca               text                   -- content-address assertion; NULL if input-addressed
);

-- References between valid paths; a path may refer to itself.
create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

-- A self-reference would make deleting its path fail the "on delete restrict" above, so it is
-- removed first.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

-- Known output paths of a valid derivation (one row per output name).
create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null,  -- output name, e.g. "out"
    path text not null,  -- full output store path
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

-- Answers "which derivations produce this path" (valid derivers).
create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
