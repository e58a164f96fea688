-- ward: extra tables for content-addressed derivations, ca-schema version 3 (the `ca-schema`
-- file next to db.sqlite says "3"). Applied only when the `ca-derivations` experimental feature
-- is enabled, after schema.sql. Names, types and constraints are those of Nix 2.8. Idempotent.

-- One row per known realisation of a derivation output.
create table if not exists Realisations (
    id         integer primary key autoincrement not null,
    drvPath    text not null,     -- the DrvOutput hash, "sha256:<lowercase base16>"
    outputName text not null,     -- output name, e.g. "out"
    outputPath integer not null,  -- the realised output
    signatures text,              -- signatures joined by single spaces; NULL if none
    foreign key (outputPath) references ValidPaths(id) on delete cascade
);

create index if not exists IndexRealisations on Realisations(drvPath, outputName);

-- Realisations a realisation depends on.
create table if not exists RealisationsRefs (
    referrer             integer not null,
    realisationReference integer,
    foreign key (referrer) references Realisations(id) on delete cascade,
    foreign key (realisationReference) references Realisations(id) on delete restrict
);

-- For listing a realisation's dependencies.
create index if not exists IndexRealisationsRefs on RealisationsRefs(referrer);
-- For the cascade when a valid path is deleted.
create index if not exists IndexRealisationsRefsOnOutputPath on Realisations(outputPath);
