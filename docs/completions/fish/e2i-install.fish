complete -c e2i-install -s z -l undo -d 'First save every block that will be overwritten to FILE (which must not exist), for `e2undo FILE DEVICE`' -r -F
complete -c e2i-install -s P -l partition -d 'Install onto the filesystem in partition N of a GPT or MBR partition table on DEVICE (MBR logical partitions from 5); nothing is written outside the partition' -r
complete -c e2i-install -s n -l dry-run -d 'Print what would be written; change nothing'
complete -c e2i-install -s f -l force -d 'Install even if DEVICE\'s filesystem UUID or geometry differs from the image\'s, or it is newer than the image (never onto a mounted device, never a scrambled image)'
complete -c e2i-install -s p -l progress -d 'Show progress on stderr (a bar on a terminal, a line every few seconds otherwise)'
complete -c e2i-install -s q -l quiet -d 'No warnings or summaries on stderr (errors are still reported)'
complete -c e2i-install -s h -l help -d 'Print help (see more with \'--help\')'
complete -c e2i-install -s V -l version -d 'Print version'
