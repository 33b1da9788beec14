-- The points of each walk mark's chunk (core.segments.Mark.points): a replay that appends to the end of a
-- segment gives the new points a chunk of their own and folds the chunk before into the one before it while
-- both fit in core.segments.CHUNK, so the next batch reads the new points again, not the whole chunk.
-- NULL (marks stored before): not known, never folded.
ALTER TABLE session_marks ADD COLUMN points integer;
