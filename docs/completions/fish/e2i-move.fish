complete -c e2i-move -s o -l src-offset -d 'Byte offset of the filesystem inside SOURCE' -r
complete -c e2i-move -s O -l dest-offset -d 'Byte offset of the copy inside DEST (or SOURCE, for a move)' -r
complete -c e2i-move -s P -l partition -d 'The filesystem in partition N of a GPT or MBR partition table on SOURCE (sets -o to its start; MBR logical partitions from 5). A clone reads nothing past the partition\'s end unless --past-partition-end; a move\'s destination must lie inside the partition' -r
complete -c e2i-move -l journal -d 'Journal of an in-place move [default: next to SOURCE (symlinks resolved) as SOURCE.e2i-move for a file; $XDG_STATE_HOME/e2i/blockdev-MAJOR:MINOR.e2i-move for a device]. Its folder must exist' -r -F
complete -c e2i-move -s c -l check -d 'Compare before writing; skip blocks the target already holds'
complete -c e2i-move -s n -l dry-run -d 'Print the blocks that would be written; create and change nothing'
complete -c e2i-move -s p -l progress -d 'Show progress on stderr (a bar on a terminal, a line every few seconds otherwise)'
complete -c e2i-move -s f -l force -d 'Clone a SOURCE that is mounted read-write (never allowed for a move)'
complete -c e2i-move -l past-partition-end -d 'A clone with -P: when the filesystem runs past the end of its partition, read on past that end, as e2image -o would (by default nothing past it is read: zeros stand for it). Never for a move, which refuses such a filesystem'
complete -c e2i-move -l metadata-only -d 'Copy the metadata only (e2image -r with offsets); clones only'
complete -c e2i-move -s q -l quiet -d 'No warnings or summaries (errors are still reported)'
complete -c e2i-move -l allow-scrambled -d 'Clone a scrambled SOURCE (an e2i-capture -s image) even over the filesystem it was taken from (an existing DEST holding its UUID at -O)'
complete -c e2i-move -s h -l help -d 'Print help (see more with \'--help\')'
complete -c e2i-move -s V -l version -d 'Print version'
