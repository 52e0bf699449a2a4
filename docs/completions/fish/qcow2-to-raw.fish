complete -c qcow2-to-raw -s O -l dest-offset -d 'Write at byte N of an existing OUTPUT, updating it in place' -r
complete -c qcow2-to-raw -s c -l check -d 'Compare before writing; write only what differs (updates OUTPUT in place)'
complete -c qcow2-to-raw -s n -l dry-run -d 'Print the byte ranges that would be written; create and change nothing'
complete -c qcow2-to-raw -s p -l progress -d 'Show progress on stderr (a bar on a terminal, a line every few seconds otherwise)'
complete -c qcow2-to-raw -s q -l quiet -d 'No warnings or summaries on stderr (errors are still reported)'
complete -c qcow2-to-raw -l json -d 'Print a one-line JSON summary (stdout, or stderr when OUTPUT is `-`)'
complete -c qcow2-to-raw -l allow-scrambled -d 'Write a scrambled INPUT (e2i-capture -s) even over the filesystem it was taken from (an existing OUTPUT or block device with its UUID), whose names, symlink targets, inline data, xattrs, journal and label then become the scrambled ones'
complete -c qcow2-to-raw -s h -l help -d 'Print help (see more with \'--help\')'
complete -c qcow2-to-raw -s V -l version -d 'Print version'
